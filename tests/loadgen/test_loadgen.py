"""run_load against a fake OrderService on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
import socket

import grpc
import pytest

from grpcmesh.shop.v1 import orders_pb2
from grpcmesh_loadgen import LoadgenError, LoadMode, run_load
from grpcmesh_loadgen.orders import CUSTOMERS, PRODUCTS, OrderFactory

from .conftest import FakeServer


async def test_places_every_order_with_a_unique_key(fake_orders: FakeServer) -> None:
    report = await run_load(fake_orders.address, 30, 300.0, run_id="r1")
    assert report.succeeded
    assert report.mode is LoadMode.OPEN
    assert report.statuses == {"OK": 30}
    assert report.outcomes == {"CONFIRMED": 30}
    keys = [r.idempotency_key for r in fake_orders.servicer.requests]
    assert len(set(keys)) == 30
    assert all(k.startswith("loadgen-r1-") for k in keys)


async def test_orders_are_valid_for_the_api(fake_orders: FakeServer) -> None:
    await run_load(fake_orders.address, 50, math.inf, seed=1)
    for request in fake_orders.servicer.requests:
        products = [item.product_id for item in request.items]
        assert 1 <= len(products) <= 3
        assert len(set(products)) == len(products)
        assert set(products) <= set(PRODUCTS)
        assert all(1 <= item.quantity <= 1000 for item in request.items)
        assert request.customer_id in CUSTOMERS
        assert request.currency_code == "USD"
        assert len(request.idempotency_key) <= 128


async def test_cancelled_orders_are_outcomes_not_failures(fake_orders: FakeServer) -> None:
    fake_orders.servicer.cancel_every = 3
    report = await run_load(fake_orders.address, 12, 400.0)
    assert report.outcomes == {"CANCELLED": 4, "CONFIRMED": 8}
    assert report.failed == 0
    assert report.succeeded


async def test_failed_calls_are_counted_by_status(fake_orders: FakeServer) -> None:
    fake_orders.servicer.fail_every = 5
    fake_orders.servicer.fail_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    report = await run_load(fake_orders.address, 20, 400.0)
    assert report.statuses == {"OK": 16, "RESOURCE_EXHAUSTED": 4}
    assert not report.succeeded
    assert report.error_samples[0].startswith("RESOURCE_EXHAUSTED: fake failure")


async def test_calls_past_their_deadline_fail(fake_orders: FakeServer) -> None:
    fake_orders.servicer.delay_s = 1.0
    report = await run_load(fake_orders.address, 3, 100.0, deadline_s=0.1)
    assert report.statuses == {"DEADLINE_EXCEEDED": 3}
    assert not report.succeeded


async def test_a_non_terminal_order_is_unexpected(fake_orders: FakeServer) -> None:
    fake_orders.servicer.state = orders_pb2.ORDER_STATE_PENDING
    report = await run_load(fake_orders.address, 2, 100.0)
    assert report.outcomes == {"PENDING": 2}
    assert not report.succeeded


async def test_in_flight_calls_stay_under_the_cap(fake_orders: FakeServer) -> None:
    fake_orders.servicer.delay_s = 0.02
    report = await run_load(fake_orders.address, 40, 2000.0, concurrency=4)
    assert report.succeeded
    assert fake_orders.servicer.max_in_flight == 4


async def test_open_loop_holds_the_asked_rate(fake_orders: FakeServer) -> None:
    report = await run_load(fake_orders.address, 40, 100.0)
    # 40 calls due over 0.39 s: the run cannot be faster than the schedule (the lower bound
    # only guards against a stalled dispatcher; a loaded machine may lag a little)
    assert report.elapsed_s >= 0.39
    assert 40.0 <= report.achieved_rate <= 103.0


async def test_a_stop_ends_the_load_early_and_the_report_covers_what_ran(
    fake_orders: FakeServer,
) -> None:
    stop = asyncio.Event()

    async def stop_after_ten() -> None:
        while len(fake_orders.servicer.requests) < 10:
            await asyncio.sleep(0.01)
        stop.set()

    stopper = asyncio.create_task(stop_after_ten())
    report = await asyncio.wait_for(run_load(fake_orders.address, 10_000, 100.0, stop=stop), 30)
    await stopper
    assert 10 <= report.planned == report.completed < 10_000
    assert report.statuses == {"OK": report.completed}
    assert len(fake_orders.servicer.requests) == report.completed


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_unreachable_target_is_a_clear_error() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(LoadgenError, match=f"cannot connect to {address}"):
        await run_load(address, 1, 1.0, connect_timeout_s=0.5)


def test_same_seed_same_orders() -> None:
    first = [OrderFactory("x", seed=7).request(i) for i in range(5)]
    again = [OrderFactory("x", seed=7).request(i) for i in range(5)]
    other = [OrderFactory("x", seed=8).request(i) for i in range(5)]
    assert first == again
    assert first != other
