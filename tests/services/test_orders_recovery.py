"""Orders recovery: a real orders process killed mid-saga and restarted on the same database,
and compensations that keep failing, finished later by a retry or by the resumer at start."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import grpc
import pytest

from grpcmesh.shop.v1 import orders_pb2, orders_pb2_grpc, payments_pb2
from tests.services.orders_fixtures import (
    CHARGE,
    Mode,
    Rule,
    Shop,
    assert_books_balance,
    assert_books_from_stores,
    event_names,
    list_all,
    orders_process,
    payment_of,
    place,
    place_request,
    rpc_error,
    running_shop,
    stock_of,
    watch_all,
)

pytestmark = pytest.mark.timeout(60)

PENDING = orders_pb2.ORDER_STATE_PENDING
CANCELLED = orders_pb2.ORDER_STATE_CANCELLED
CONFIRMED = orders_pb2.ORDER_STATE_CONFIRMED


# --- 4. kill -9 mid-saga -------------------------------------------------------------------------


def pending_in_db(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM orders WHERE state = 'PENDING'").fetchone()
        return int(count)
    finally:
        conn.close()


LEASES = {"saga_lease_seconds": "6", "recovery_interval_seconds": "0.2"}


async def test_orders_killed_mid_saga_finish_every_order_after_restart(tmp_path: Path) -> None:
    stock = {"sku-0001": 12, "sku-0002": 100}
    keys = [f"key-{n}" for n in range(24)]
    items = (("sku-0001", 1), ("sku-0002", 2))
    # Slow payments keep sagas in flight; limited stock makes some orders cancel.
    async with running_shop(
        tmp_path, stock=stock, payments={"latency_ms": 400}, with_orders=False
    ) as shop:
        async with orders_process(shop, "first", settings=LEASES) as (process, address):
            channel = await shop.stack.enter_async_context(grpc.aio.insecure_channel(address))
            stub = orders_pb2_grpc.OrderServiceStub(channel)
            charges_arrived = shop.faults.when(CHARGE, 4)
            placing = [asyncio.create_task(place(stub, key, items, timeout=30)) for key in keys]
            await asyncio.wait_for(charges_arrived.wait(), timeout=15)
            process.signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
        outcomes = await asyncio.gather(*placing, return_exceptions=True)
        assert all(isinstance(o, orders_pb2.Order | grpc.aio.AioRpcError) for o in outcomes)
        # The kill interrupted sagas: their logs end without a terminal event.
        assert pending_in_db(shop.orders_db) > 0

        # The killed process's leases lapse: the new one takes its sagas over.
        async with orders_process(shop, "second", settings=LEASES) as (_, address):
            channel = await shop.stack.enter_async_context(grpc.aio.insecure_channel(address))
            stub = orders_pb2_grpc.OrderServiceStub(channel)
            # No client action needed: the resumer finishes every interrupted saga.
            async with asyncio.timeout(20):
                recovered = await list_all(stub)
                while any(o.state == PENDING for o in recovered):
                    await asyncio.sleep(0.05)
                    recovered = await list_all(stub)
            assert recovered

            # Clients retrying with their keys get the same orders, now terminal; keys whose
            # request never reached orders before the kill get new orders.
            final = await asyncio.gather(*(place(stub, key, items, timeout=30) for key in keys))
            assert {o.order_id for o in recovered} <= {o.order_id for o in final}
            assert len({o.order_id for o in final}) == len(keys)
            assert all(o.state in (CONFIRMED, CANCELLED) for o in final)
            assert sum(o.state == CONFIRMED for o in final) == 12  # all of sku-0001, no more
            for order in final:
                events = await watch_all(stub, order.order_id)
                assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            await assert_books_balance(shop, final, stock)
            assert_books_from_stores(shop)
            # Charges in flight at the kill were sent again after the restart (same keys), and
            # payments answered them with the first outcome: more calls than payments.
            assert shop.faults.calls[CHARGE] > len(shop.faults.payment_ids) == 12


# --- compensation that keeps failing -------------------------------------------------------------


ITEMS = (("sku-0001", 1),)
STOCK = {"sku-0001": 5}
STALLED = ["PLACED", "PRICED", "STOCK_RESERVED", "STEP_FAILED"]


def logged_types(db: Path, order_id: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT type FROM order_events WHERE order_id = ? ORDER BY sequence", (order_id,)
        ).fetchall()
        return [str(row[0]) for row in rows]
    finally:
        conn.close()


async def stall_an_order(shop: Shop) -> orders_pb2.Order:
    """Payments is down for good: the charge fails with an unknown outcome, and resolving it
    (by resending) fails too, so the order is left compensating."""
    shop.faults.rules[CHARGE] = Rule(Mode.REJECT, times=None)
    stub = shop.order_stub
    error = await rpc_error(stub.PlaceOrder(place_request("k", ITEMS), timeout=10))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry with the same idempotency_key" in (error.details() or "")
    (order,) = await list_all(stub)
    assert order.state == PENDING
    assert logged_types(shop.orders_db, order.order_id) == STALLED
    # The stock stays held while the money question is open: never money without goods.
    assert (await stock_of(shop, "sku-0001")).reserved == 1
    return order


async def test_a_stalled_compensation_is_finished_by_a_client_retry(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK, orders={"compensation_attempts": 2}) as shop:
        stalled = await stall_an_order(shop)
        del shop.faults.rules[CHARGE]  # payments is back

        order = await place(shop.order_stub, "k", ITEMS)
        assert order.order_id == stalled.order_id
        assert order.state == CANCELLED
        # The resent charge captured (the outage recorded nothing), so it was refunded.
        assert (await payment_of(shop, order.payment_id)).state == (
            payments_pb2.PAYMENT_STATE_REFUNDED
        )
        await assert_books_balance(shop, [order], STOCK)


async def test_a_stalled_compensation_is_resumed_at_start(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK, orders={"compensation_attempts": 2}) as shop:
        stalled = await stall_an_order(shop)
        del shop.faults.rules[CHARGE]

        await shop.restart_orders()
        # Nobody retries: the resumer at start finishes it, and the watch sees it happen.
        rest = await watch_all(shop.order_stub, stalled.order_id, after=len(STALLED))
        assert event_names(rest) == [
            "PAYMENT_CAPTURED", "PAYMENT_REFUNDED", "STOCK_RELEASED", "CANCELLED"
        ]  # fmt: skip
        order = (
            await shop.order_stub.GetOrder(orders_pb2.GetOrderRequest(order_id=stalled.order_id))
        ).order
        assert order.state == CANCELLED
        assert "charge failed (UNAVAILABLE)" in order.failure_reason
        await assert_books_balance(shop, [order], STOCK)
