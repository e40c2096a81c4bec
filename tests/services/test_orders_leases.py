"""Saga leases in the orders store: one owner at a time, taken over only once expired, and an
append by a process that lost its lease is refused (so two replicas never both write a saga)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from grpcmesh_kit import Store
from grpcmesh_orders import storage
from grpcmesh_orders.events import Cancelled, LineItem, Money, Priced, PricedLine
from grpcmesh_orders.storage import Lease, LeaseLost, OrderRepository
from grpcmesh_orders.validation import validate_place_order

T0 = datetime(2026, 1, 1, tzinfo=UTC)
A = Lease("replica-a", 10)
B = Lease("replica-b", 10)
PRICED = Priced((PricedLine("sku-1", 1, Money("USD", 100)),), Money("USD", 100))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[OrderRepository, OrderRepository, Clock]]:
    """Two repositories on one database file: two replicas, one clock."""
    clock = Clock()
    first = Store(tmp_path / "orders.db", storage.MIGRATIONS)
    second = Store(tmp_path / "orders.db", storage.MIGRATIONS)
    await first.open()
    await second.open()
    try:
        yield OrderRepository(first, clock), OrderRepository(second, clock), clock
    finally:
        await first.close()
        await second.close()


async def place(repo: OrderRepository, key: str, lease: Lease | None) -> str:
    command = validate_place_order(key, "cust-1", [LineItem("sku-1", 1)], "USD")
    return (await repo.place(command, f"order-{key}", lease)).order_id


async def test_a_new_order_is_leased_to_its_placer_until_the_lease_expires(
    stores: tuple[OrderRepository, OrderRepository, Clock],
) -> None:
    a, b, clock = stores
    order = await place(a, "k1", A)
    assert await b.claimable(B.owner, 10) == []  # placed and leased in one transaction
    assert not await b.claim(order, B)
    assert await a.claim(order, A)  # renewal by the owner
    clock.now += timedelta(seconds=9.9)
    assert not await b.claim(order, B)
    clock.now += timedelta(seconds=0.2)  # A's renewal at T0 lapsed at T0 + 10 s
    assert await b.claimable(B.owner, 10) == [order]
    assert await b.claim(order, B)
    assert not await a.claim(order, A)


async def test_an_append_without_the_lease_is_refused(
    stores: tuple[OrderRepository, OrderRepository, Clock],
) -> None:
    a, b, clock = stores
    order = await place(a, "k1", A)
    clock.now += timedelta(seconds=11)
    assert await b.claim(order, B)
    # A hung past its lease and wakes up: its write must not land over B's saga.
    with pytest.raises(LeaseLost):
        await a.append(order, 1, [PRICED], A)
    assert len(await a.events(order)) == 1
    events = await b.append(order, 1, [PRICED], B)
    assert len(events) == 2


async def test_the_end_of_a_saga_frees_its_lease_and_stop_hands_leases_back(
    stores: tuple[OrderRepository, OrderRepository, Clock],
) -> None:
    a, b, _ = stores
    done = await place(a, "k1", A)
    await a.append(done, 1, [Cancelled("test")], A)
    held = await place(a, "k2", A)
    assert await a.claimable(A.owner, 10) == [held]  # its own, e.g. after a stall
    assert await b.claimable(B.owner, 10) == []
    await a.release_leases(A.owner)  # what a graceful stop does
    assert await b.claimable(B.owner, 10) == [held]


async def test_orders_placed_before_leases_existed_are_claimable(
    stores: tuple[OrderRepository, OrderRepository, Clock],
) -> None:
    a, b, _ = stores
    order = await place(a, "k1", None)
    assert await b.claimable(B.owner, 10) == [order]
    assert await b.claim(order, B)
    assert await a.claimable(A.owner, 10) == []
