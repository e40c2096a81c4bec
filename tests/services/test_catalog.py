"""Catalog over real gRPC: seeded products, paging, validation and the TTL cache."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from grpcmesh_catalog.main import build_app
from grpcmesh_catalog.settings import CatalogSettings
from grpcmesh_kit import Store
from tests.services.processes import service_process

if TYPE_CHECKING:
    # Exists only in the generated stubs, for typing async stubs.
    from grpcmesh.shop.v1.catalog_pb2_grpc import CatalogServiceAsyncStub as Stub

T = TypeVar("T")
SKUS = [f"sku-{n:04d}" for n in range(1, 9)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_settings(tmp_path: Path, **overrides: Any) -> CatalogSettings:
    return CatalogSettings(
        db_path=str(tmp_path / "catalog.db"),
        port=0,
        metrics_port=0,
        drain_seconds=0,
        grace_seconds=1,
        **overrides,
    )


@asynccontextmanager
async def serve(settings: CatalogSettings, clock: FakeClock | None = None) -> AsyncIterator[Stub]:
    app = build_app(settings, clock=clock or FakeClock())
    async with app.running(), grpc.aio.insecure_channel(app.address) as channel:
        yield catalog_pb2_grpc.CatalogServiceStub(channel)


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    async with serve(make_settings(tmp_path)) as s:
        yield s


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


def rename(db_path: Path, product_id: str, name: str) -> None:
    """Changes a product behind the service's back, to see whether it reads the store."""
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE products SET name = ? WHERE product_id = ?", (name, product_id))
    conn.close()


async def test_lists_the_eight_seeded_products_in_id_order(stub: Stub) -> None:
    response = await stub.ListProducts(catalog_pb2.ListProductsRequest())
    assert [p.product_id for p in response.products] == SKUS
    assert response.next_page_token == ""
    for p in response.products:
        assert p.name
        assert p.price.currency_code == "USD"
        assert p.price.amount_minor > 0
    assert len({p.name for p in response.products}) == 8


async def test_pages_through_every_product_exactly_once(stub: Stub) -> None:
    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    for _ in range(10):  # bounded: 8 products in pages of 3 need 3 pages
        page = await stub.ListProducts(
            catalog_pb2.ListProductsRequest(page_size=3, page_token=token)
        )
        seen += [p.product_id for p in page.products]
        sizes.append(len(page.products))
        token = page.next_page_token
        if not token:
            break
    assert seen == SKUS
    assert sizes == [3, 3, 2]


@pytest.mark.parametrize("page_size", [-1, 501])
async def test_page_size_out_of_range_is_invalid(stub: Stub, page_size: int) -> None:
    error = await rpc_error(stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=page_size)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("page_size:")


async def test_largest_page_size_is_accepted(stub: Stub) -> None:
    response = await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=500))
    assert len(response.products) == 8


async def test_invalid_page_token_is_invalid(stub: Stub) -> None:
    error = await rpc_error(
        stub.ListProducts(catalog_pb2.ListProductsRequest(page_token="bogus-token"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("page_token:")


async def test_get_product(stub: Stub) -> None:
    response = await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="sku-0004"))
    listed = await stub.ListProducts(catalog_pb2.ListProductsRequest())
    assert response.product == listed.products[3]


async def test_get_product_requires_an_id(stub: Stub) -> None:
    error = await rpc_error(stub.GetProduct(catalog_pb2.GetProductRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("product_id:")


async def test_unknown_product_is_not_found(stub: Stub) -> None:
    error = await rpc_error(stub.GetProduct(catalog_pb2.GetProductRequest(product_id="sku-9999")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_restart_keeps_exactly_the_seeded_products(tmp_path: Path) -> None:
    for _ in range(2):
        async with serve(make_settings(tmp_path)) as stub:
            response = await stub.ListProducts(catalog_pb2.ListProductsRequest())
            assert [p.product_id for p in response.products] == SKUS


@pytest.fixture
def store_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every Store.run, so tests can tell cache hits from store reads."""
    calls: list[str] = []
    original = Store.run

    async def counting(self: Store, fn: Callable[[sqlite3.Connection], T]) -> T:
        calls.append(self.path)
        return await original(self, fn)

    monkeypatch.setattr(Store, "run", counting)
    return calls


async def test_get_product_cache_hits_skip_the_store_until_the_ttl_expires(
    tmp_path: Path, store_calls: list[str]
) -> None:
    clock = FakeClock()
    request = catalog_pb2.GetProductRequest(product_id="sku-0001")
    async with serve(make_settings(tmp_path, cache_ttl_seconds=30), clock) as stub:
        first = await stub.GetProduct(request)
        assert len(store_calls) == 1

        rename(tmp_path / "catalog.db", "sku-0001", "Renamed Beans")
        clock.now += 29
        cached = await stub.GetProduct(request)
        assert cached.product.name == first.product.name  # stale by design within the TTL
        assert len(store_calls) == 1

        clock.now += 1
        refreshed = await stub.GetProduct(request)
        assert refreshed.product.name == "Renamed Beans"
        assert len(store_calls) == 2


async def test_list_cache_hits_skip_the_store_until_the_ttl_expires(
    tmp_path: Path, store_calls: list[str]
) -> None:
    clock = FakeClock()
    request = catalog_pb2.ListProductsRequest(page_size=2)
    async with serve(make_settings(tmp_path, cache_ttl_seconds=5), clock) as stub:
        await stub.ListProducts(request)
        rename(tmp_path / "catalog.db", "sku-0002", "Renamed Kettle")
        cached = await stub.ListProducts(request)
        assert cached.products[1].name != "Renamed Kettle"
        assert len(store_calls) == 1

        # A different page is a different cache entry.
        await stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=3))
        assert len(store_calls) == 2

        clock.now += 5
        refreshed = await stub.ListProducts(request)
        assert refreshed.products[1].name == "Renamed Kettle"
        assert len(store_calls) == 3


async def test_unknown_products_are_not_cached(tmp_path: Path, store_calls: list[str]) -> None:
    async with serve(make_settings(tmp_path)) as stub:
        for _ in range(2):
            await rpc_error(stub.GetProduct(catalog_pb2.GetProductRequest(product_id="nope")))
        assert len(store_calls) == 2


async def test_ttl_zero_disables_the_cache(tmp_path: Path, store_calls: list[str]) -> None:
    request = catalog_pb2.GetProductRequest(product_id="sku-0003")
    async with serve(make_settings(tmp_path, cache_ttl_seconds=0)) as stub:
        await stub.GetProduct(request)
        rename(tmp_path / "catalog.db", "sku-0003", "Renamed Mug")
        response = await stub.GetProduct(request)
        assert response.product.name == "Renamed Mug"
        assert len(store_calls) == 2


@pytest.mark.slow
async def test_python_m_catalog_serves_until_sigterm(tmp_path: Path) -> None:
    """`python -m grpcmesh_catalog` configures itself from the environment, serves, and exits
    cleanly on SIGTERM."""
    env = {"GRPCMESH_DB_PATH": str(tmp_path / "catalog.db")}
    async with service_process("grpcmesh_catalog", tmp_path, env) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        response = await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="sku-0008"))
        assert response.product.product_id == "sku-0008"
