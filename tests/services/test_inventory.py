"""Inventory over real gRPC: seeding, reservations, idempotency, validation, concurrency."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from grpcmesh.shop.v1 import common_pb2, inventory_pb2, inventory_pb2_grpc
from grpcmesh_inventory.main import build_app
from grpcmesh_inventory.settings import InventorySettings
from tests.services.processes import service_process

if TYPE_CHECKING:
    # Exists only in the generated stubs, for typing async stubs.
    from grpcmesh.shop.v1.inventory_pb2_grpc import InventoryServiceAsyncStub as Stub

RESERVED = inventory_pb2.RESERVATION_STATE_RESERVED
RELEASED = inventory_pb2.RESERVATION_STATE_RELEASED
COMMITTED = inventory_pb2.RESERVATION_STATE_COMMITTED
SEED = {"sku-0001": 10, "sku-0002": 5}


def make_settings(tmp_path: Path, **overrides: Any) -> InventorySettings:
    values: dict[str, Any] = {
        "db_path": str(tmp_path / "inventory.db"),
        "port": 0,
        "metrics_port": 0,
        "drain_seconds": 0,
        "grace_seconds": 1,
        "seed_stock": SEED,
    }
    return InventorySettings(**(values | overrides))


@asynccontextmanager
async def serve(settings: InventorySettings) -> AsyncIterator[Stub]:
    app = build_app(settings)
    async with app.running(), grpc.aio.insecure_channel(app.address) as channel:
        yield inventory_pb2_grpc.InventoryServiceStub(channel)


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    async with serve(make_settings(tmp_path)) as s:
        yield s


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


def items(**quantities: int) -> list[common_pb2.LineItem]:
    """items(sku_0001=2) -> [LineItem("sku-0001", 2)]."""
    return [
        common_pb2.LineItem(product_id=name.replace("_", "-"), quantity=q)
        for name, q in quantities.items()
    ]


def reserve(
    order_id: str, line_items: list[common_pb2.LineItem]
) -> inventory_pb2.ReserveStockRequest:
    return inventory_pb2.ReserveStockRequest(order_id=order_id, items=line_items)


async def levels(stub: Stub, *product_ids: str) -> dict[str, tuple[int, int, int]]:
    """(available, reserved, committed) per product."""
    result = {}
    for product_id in product_ids:
        stock = (await stub.GetStock(inventory_pb2.GetStockRequest(product_id=product_id))).stock
        result[product_id] = (stock.available, stock.reserved, stock.committed)
    return result


def db_rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Reads the service's database directly, to check what was (not) written."""
    conn = sqlite3.connect(tmp_path / "inventory.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_seeded_stock_is_visible(stub: Stub) -> None:
    assert await levels(stub, "sku-0001", "sku-0002") == {
        "sku-0001": (10, 0, 0),
        "sku-0002": (5, 0, 0),
    }


async def test_get_stock_unknown_product_is_not_found_and_empty_id_invalid(stub: Stub) -> None:
    error = await rpc_error(stub.GetStock(inventory_pb2.GetStockRequest(product_id="sku-9999")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(stub.GetStock(inventory_pb2.GetStockRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("product_id:")


async def test_seed_only_fills_missing_rows_across_restarts_and_replicas(tmp_path: Path) -> None:
    async with serve(make_settings(tmp_path)) as stub:
        await stub.ReserveStock(reserve("o-1", items(sku_0001=3)))
        await stub.AdjustStock(inventory_pb2.AdjustStockRequest(product_id="sku-0002", delta=-5))

    # Restart as two replicas sharing the database, with a seed that adds a product.
    reseed = make_settings(tmp_path, seed_stock={"sku-0001": 10, "sku-0002": 5, "sku-0003": 7})
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(serve(reseed))
        second = await stack.enter_async_context(serve(reseed))
        for replica in (first, second):
            assert await levels(replica, "sku-0001", "sku-0002", "sku-0003") == {
                "sku-0001": (7, 3, 0),
                "sku-0002": (0, 0, 0),
                "sku-0003": (7, 0, 0),
            }


async def test_reserve_moves_stock_and_repeats_are_idempotent(stub: Stub) -> None:
    response = await stub.ReserveStock(reserve("o-1", items(sku_0001=2, sku_0002=1)))
    assert (response.order_id, response.state) == ("o-1", RESERVED)
    expected = {"sku-0001": (8, 2, 0), "sku-0002": (4, 1, 0)}
    assert await levels(stub, *expected) == expected

    # Same items in another order: the same request, so nothing more is reserved.
    again = await stub.ReserveStock(reserve("o-1", items(sku_0002=1, sku_0001=2)))
    assert again.state == RESERVED
    assert await levels(stub, *expected) == expected


async def test_repeat_with_different_items_is_invalid_and_changes_nothing(stub: Stub) -> None:
    await stub.ReserveStock(reserve("o-1", items(sku_0001=2)))
    error = await rpc_error(stub.ReserveStock(reserve("o-1", items(sku_0001=3))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("items:")
    assert await levels(stub, "sku-0001") == {"sku-0001": (8, 2, 0)}


async def test_short_stock_reserves_nothing_and_names_the_product(stub: Stub) -> None:
    error = await rpc_error(stub.ReserveStock(reserve("o-1", items(sku_0001=2, sku_0002=6))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sku-0002" in (error.details() or "")
    assert await levels(stub, "sku-0001", "sku-0002") == {
        "sku-0001": (10, 0, 0),
        "sku-0002": (5, 0, 0),
    }
    # Nothing was recorded for the order, so it can still reserve what is available.
    response = await stub.ReserveStock(reserve("o-1", items(sku_0001=2, sku_0002=5)))
    assert response.state == RESERVED


async def test_unknown_product_has_no_stock(stub: Stub) -> None:
    error = await rpc_error(stub.ReserveStock(reserve("o-1", items(sku_0099=1))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sku-0099" in (error.details() or "")


async def test_release_returns_stock_once_and_refuses_a_later_reserve(stub: Stub) -> None:
    await stub.ReserveStock(reserve("o-1", items(sku_0001=4)))
    for _ in range(2):
        response = await stub.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id="o-1"))
        assert (response.order_id, response.state) == ("o-1", RELEASED)
        assert await levels(stub, "sku-0001") == {"sku-0001": (10, 0, 0)}

    error = await rpc_error(stub.ReserveStock(reserve("o-1", items(sku_0001=4))))
    assert error.code() == grpc.StatusCode.ABORTED
    assert await levels(stub, "sku-0001") == {"sku-0001": (10, 0, 0)}


async def test_release_of_unknown_order_leaves_a_tombstone(stub: Stub) -> None:
    response = await stub.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id="o-late"))
    assert response.state == RELEASED
    error = await rpc_error(stub.ReserveStock(reserve("o-late", items(sku_0001=1))))
    assert error.code() == grpc.StatusCode.ABORTED
    assert await levels(stub, "sku-0001") == {"sku-0001": (10, 0, 0)}


async def test_commit_turns_a_reservation_into_a_sale_once(stub: Stub) -> None:
    await stub.ReserveStock(reserve("o-1", items(sku_0001=3)))
    for _ in range(2):
        response = await stub.CommitStock(inventory_pb2.CommitStockRequest(order_id="o-1"))
        assert (response.order_id, response.state) == ("o-1", COMMITTED)
        assert await levels(stub, "sku-0001") == {"sku-0001": (7, 0, 3)}

    error = await rpc_error(stub.ReserveStock(reserve("o-1", items(sku_0001=3))))
    assert error.code() == grpc.StatusCode.ABORTED
    error = await rpc_error(stub.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id="o-1")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await levels(stub, "sku-0001") == {"sku-0001": (7, 0, 3)}


@pytest.mark.parametrize("released", [True, False])
async def test_commit_requires_a_reservation(stub: Stub, released: bool) -> None:
    if released:
        await stub.ReserveStock(reserve("o-1", items(sku_0001=1)))
        await stub.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id="o-1"))
    error = await rpc_error(stub.CommitStock(inventory_pb2.CommitStockRequest(order_id="o-1")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await levels(stub, "sku-0001") == {"sku-0001": (10, 0, 0)}


async def test_adjust_applies_every_call_and_never_goes_below_zero(stub: Stub) -> None:
    add = inventory_pb2.AdjustStockRequest(product_id="sku-0001", delta=5)
    assert (await stub.AdjustStock(add)).stock.available == 15
    assert (await stub.AdjustStock(add)).stock.available == 20  # not idempotent, by contract

    await stub.ReserveStock(reserve("o-1", items(sku_0001=4)))
    remove = inventory_pb2.AdjustStockRequest(product_id="sku-0001", delta=-16)
    stock = (await stub.AdjustStock(remove)).stock
    assert (stock.available, stock.reserved, stock.committed) == (0, 4, 0)

    error = await rpc_error(
        stub.AdjustStock(inventory_pb2.AdjustStockRequest(product_id="sku-0001", delta=-1))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await levels(stub, "sku-0001") == {"sku-0001": (0, 4, 0)}


async def test_adjust_creates_stock_for_a_new_product(stub: Stub) -> None:
    response = await stub.AdjustStock(
        inventory_pb2.AdjustStockRequest(product_id="sku-0042", delta=3)
    )
    assert response.stock.product_id == "sku-0042"
    assert await levels(stub, "sku-0042") == {"sku-0042": (3, 0, 0)}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (inventory_pb2.AdjustStockRequest(product_id="sku-0001"), "delta"),
        (inventory_pb2.AdjustStockRequest(delta=1), "product_id"),
    ],
)
async def test_invalid_adjust_is_rejected(
    stub: Stub, request_: inventory_pb2.AdjustStockRequest, field: str
) -> None:
    error = await rpc_error(stub.AdjustStock(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}:")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (reserve("", items(sku_0001=1)), "order_id"),
        (reserve("o" * 129, items(sku_0001=1)), "order_id"),
        (reserve("o-bad", []), "items"),
        (
            reserve(
                "o-bad", [common_pb2.LineItem(product_id=f"p{i}", quantity=1) for i in range(101)]
            ),
            "items",
        ),
        (reserve("o-bad", items(sku_0001=1, sku_0002=0)), "items[1].quantity"),
        (reserve("o-bad", items(sku_0001=1001)), "items[0].quantity"),
        (
            reserve("o-bad", [*items(sku_0001=1), common_pb2.LineItem(quantity=1)]),
            "items[1].product_id",
        ),
        (
            reserve(
                "o-bad",
                [
                    *items(sku_0001=1, sku_0002=1),
                    common_pb2.LineItem(product_id="sku-0001", quantity=1),
                ],
            ),
            "items[2].product_id",
        ),
    ],
)
async def test_invalid_reserve_names_the_field_and_writes_nothing(
    tmp_path: Path, stub: Stub, request_: inventory_pb2.ReserveStockRequest, field: str
) -> None:
    stock_before = db_rows(tmp_path, "SELECT * FROM stock ORDER BY product_id")

    error = await rpc_error(stub.ReserveStock(request_))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}:")
    assert db_rows(tmp_path, "SELECT * FROM stock ORDER BY product_id") == stock_before
    assert db_rows(tmp_path, "SELECT count(*) FROM reservations") == [(0,)]
    assert db_rows(tmp_path, "SELECT count(*) FROM reservation_items") == [(0,)]


async def test_release_and_commit_require_a_valid_order_id(tmp_path: Path, stub: Stub) -> None:
    for call in (
        stub.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id="o" * 129)),
        stub.ReleaseStock(inventory_pb2.ReleaseStockRequest()),
        stub.CommitStock(inventory_pb2.CommitStockRequest()),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith("order_id:")
    assert db_rows(tmp_path, "SELECT count(*) FROM reservations") == [(0,)]


async def test_concurrent_reserves_never_oversell(tmp_path: Path) -> None:
    async with serve(make_settings(tmp_path, seed_stock={"sku-hot": 50})) as stub:

        async def one(n: int) -> grpc.StatusCode:
            try:
                await stub.ReserveStock(reserve(f"o-{n:03d}", items(sku_hot=1)))
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        codes = Counter(await asyncio.gather(*(one(n) for n in range(200))))

        assert codes == {grpc.StatusCode.OK: 50, grpc.StatusCode.FAILED_PRECONDITION: 150}
        assert await levels(stub, "sku-hot") == {"sku-hot": (0, 50, 0)}
        assert db_rows(tmp_path, "SELECT count(*) FROM reservations") == [(50,)]


@pytest.mark.slow
async def test_python_m_inventory_serves_until_sigterm(tmp_path: Path) -> None:
    """`python -m grpcmesh_inventory` configures itself from the environment, serves, and exits
    cleanly on SIGTERM."""
    env = {
        "GRPCMESH_DB_PATH": str(tmp_path / "inventory.db"),
        "GRPCMESH_SEED_STOCK": json.dumps({"sku-0001": 4}),
    }
    async with service_process("grpcmesh_inventory", tmp_path, env) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        assert await levels(stub, "sku-0001") == {"sku-0001": (4, 0, 0)}
