"""Unit tests of the catalog's pure rules: paging, validation and the TTL cache."""

from __future__ import annotations

import base64
import json

import pytest

from grpcmesh_catalog import domain
from grpcmesh_catalog.cache import TtlCache
from grpcmesh_catalog.domain import Product
from grpcmesh_kit import InvalidArgument


def product(n: int) -> Product:
    return Product(f"sku-{n:04d}", f"name {n}", "", "USD", 100 * n)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("given", "expected"), [(0, 50), (1, 1), (50, 50), (500, 500)])
def test_page_size_defaults_and_bounds(given: int, expected: int) -> None:
    assert domain.validate_page_size(given) == expected


@pytest.mark.parametrize("given", [-1, 501, 2**31 - 1])
def test_page_size_out_of_range_names_the_field(given: int) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.validate_page_size(given)
    assert exc.value.field == "page_size"


def test_page_token_round_trips_and_is_opaque() -> None:
    token = domain.encode_page_token("sku-0003")
    assert "sku-0003" not in token
    assert domain.decode_page_token(token) == "sku-0003"
    assert domain.decode_page_token("") == ""


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        "%%%%",
        _b64("not json"),
        _b64(json.dumps(["sku-0001"])),
        _b64(json.dumps({"v": 2, "after": "sku-0001"})),
        _b64(json.dumps({"v": 1, "after": ""})),
        _b64(json.dumps({"v": 1, "after": 7})),
        "\u00e9t\u00e9",
    ],
)
def test_invalid_page_token_names_the_field(token: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.decode_page_token(token)
    assert exc.value.field == "page_token"


def test_validate_list_combines_token_and_size() -> None:
    request = domain.validate_list(0, domain.encode_page_token("sku-0002"))
    assert request == domain.PageRequest(after="sku-0002", limit=50)


def test_make_page_issues_a_token_only_when_more_rows_follow() -> None:
    rows = [product(n) for n in range(1, 5)]
    more = domain.make_page(rows, 3)
    assert [p.product_id for p in more.products] == ["sku-0001", "sku-0002", "sku-0003"]
    assert domain.decode_page_token(more.next_page_token) == "sku-0003"

    exact = domain.make_page(rows[:3], 3)
    assert len(exact.products) == 3
    assert exact.next_page_token == ""
    assert domain.make_page([], 3) == domain.Page((), "")


@pytest.mark.parametrize("product_id", ["", "x" * 129])
def test_invalid_product_id_names_the_field(product_id: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.validate_product_id(product_id)
    assert exc.value.field == "product_id"


def test_cache_hit_until_ttl_then_miss() -> None:
    clock = FakeClock()
    cache: TtlCache[str, int] = TtlCache(clock=clock)
    cache.put("a", 1, ttl=30)
    clock.now += 29.9
    assert cache.get("a") == 1
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_cache_ttl_zero_disables_and_evicts_existing_entry() -> None:
    cache: TtlCache[str, int] = TtlCache(clock=FakeClock())
    cache.put("a", 1, ttl=30)
    cache.put("a", 2, ttl=0)
    assert cache.get("a") is None


def test_cache_is_bounded_evicting_oldest() -> None:
    cache: TtlCache[str, int] = TtlCache(max_entries=2, clock=FakeClock())
    cache.put("a", 1, ttl=30)
    cache.put("b", 2, ttl=30)
    cache.put("c", 3, ttl=30)
    assert cache.get("a") is None
    assert (cache.get("b"), cache.get("c")) == (2, 3)
