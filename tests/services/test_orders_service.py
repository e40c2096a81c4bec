"""Orders over real gRPC on 127.0.0.1, with catalog, inventory and payments running in-process.

Failures are injected into the *other* services by a test-only server interceptor (see
orders_fixtures.FaultInjector) or by payments' own failure settings; the services' code has
no test hooks.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from grpcmesh.shop.v1 import common_pb2, inventory_pb2, orders_pb2, orders_pb2_grpc, payments_pb2
from grpcmesh_orders.main import build_app as build_orders
from tests.services.orders_fixtures import (
    CHARGE,
    COMMIT,
    GET_PRODUCT,
    RESERVE,
    Mode,
    Rule,
    assert_books_balance,
    count_rows,
    event_names,
    list_all,
    payment_of,
    place,
    place_request,
    rpc_error,
    running_shop,
    stock_of,
    watch_all,
)

pytestmark = pytest.mark.timeout(60)

CANCELLED = orders_pb2.ORDER_STATE_CANCELLED
CONFIRMED = orders_pb2.ORDER_STATE_CONFIRMED
STOCK = {"sku-0001": 10, "sku-0002": 10}
ITEMS = (("sku-0001", 2), ("sku-0002", 1))
HAPPY = ["PLACED", "PRICED", "STOCK_RESERVED", "PAYMENT_CAPTURED", "STOCK_COMMITTED", "CONFIRMED"]


# --- 1. the saga fault matrix --------------------------------------------------------------------


@dataclass(frozen=True)
class FaultCase:
    name: str
    rules: dict[str, Rule] = field(default_factory=dict)
    payments: dict[str, Any] = field(default_factory=dict)
    expected_state: int = CANCELLED
    events: tuple[str, ...] = ()
    # The state of the order's payment, None if no charge returned one.
    payment_state: int | None = None
    # Charge calls payments saw: a definite failure is never re-sent, an unknown one is.
    charges: int = 0
    reason: str = ""


FAULTS = [
    FaultCase(
        "pricing-unavailable",
        rules={GET_PRODUCT: Rule(Mode.REJECT, times=None)},
        events=("PLACED", "STEP_FAILED", "CANCELLED"),
        reason="pricing failed",
    ),
    FaultCase(
        "reserve-rejected",
        rules={RESERVE: Rule(Mode.REJECT)},
        events=("PLACED", "PRICED", "STEP_FAILED", "STOCK_RELEASED", "CANCELLED"),
        reason="reserve failed (UNAVAILABLE)",
    ),
    FaultCase(
        # The reserve landed but its response was lost: the always-release rule undoes it.
        "reserve-lost",
        rules={RESERVE: Rule(Mode.LOSE, grpc.StatusCode.DEADLINE_EXCEEDED)},
        events=("PLACED", "PRICED", "STEP_FAILED", "STOCK_RELEASED", "CANCELLED"),
        reason="reserve failed (DEADLINE_EXCEEDED)",
    ),
    FaultCase(
        # Unknown outcome, nothing charged: resolving it by resending captures, then refunds.
        "charge-rejected",
        rules={CHARGE: Rule(Mode.REJECT)},
        # Money is settled before stock is released, never the other way round.
        events=(
            "PLACED", "PRICED", "STOCK_RESERVED", "STEP_FAILED", "PAYMENT_CAPTURED",
            "PAYMENT_REFUNDED", "STOCK_RELEASED", "CANCELLED",
        ),
        payment_state=payments_pb2.PAYMENT_STATE_REFUNDED,
        reason="charge failed (UNAVAILABLE)",
        charges=2,
    ),
    FaultCase(
        # The charge captured but the response was lost: found by resending, then refunded.
        "charge-lost",
        rules={CHARGE: Rule(Mode.LOSE)},
        # Money is settled before stock is released, never the other way round.
        events=(
            "PLACED", "PRICED", "STOCK_RESERVED", "STEP_FAILED", "PAYMENT_CAPTURED",
            "PAYMENT_REFUNDED", "STOCK_RELEASED", "CANCELLED",
        ),
        payment_state=payments_pb2.PAYMENT_STATE_REFUNDED,
        reason="charge failed (UNAVAILABLE)",
        charges=2,
    ),
    FaultCase(
        # A decline is definite: no resend, nothing captured, nothing to refund.
        "declined",
        payments={"failure_rate": 1.0, "failure_code": "FAILED_PRECONDITION"},
        events=("PLACED", "PRICED", "STOCK_RESERVED", "STEP_FAILED", "STOCK_RELEASED",
                "CANCELLED"),
        reason="payment declined",
        charges=1,
    ),
    FaultCase(
        # Unknown outcome, not landed: re-sending the commit (idempotent) lands it, and the
        # sale stands; the money already captured is not given back.
        "commit-rejected",
        rules={COMMIT: Rule(Mode.REJECT)},
        expected_state=CONFIRMED,
        events=(
            "PLACED", "PRICED", "STOCK_RESERVED", "PAYMENT_CAPTURED", "STEP_FAILED",
            "STOCK_COMMITTED", "CONFIRMED",
        ),
        payment_state=payments_pb2.PAYMENT_STATE_CAPTURED,
        charges=1,
    ),
    FaultCase(
        # Refused outright (definite): refund first, release last.
        "commit-refused",
        rules={COMMIT: Rule(Mode.REJECT, grpc.StatusCode.FAILED_PRECONDITION)},
        events=(
            "PLACED", "PRICED", "STOCK_RESERVED", "PAYMENT_CAPTURED", "STEP_FAILED",
            "PAYMENT_REFUNDED", "STOCK_RELEASED", "CANCELLED",
        ),
        payment_state=payments_pb2.PAYMENT_STATE_REFUNDED,
        reason="commit failed (FAILED_PRECONDITION)",
        charges=1,
    ),
    FaultCase(
        # The commit landed: re-sending it succeeds, and the saga rolls forward instead of
        # refunding a sale.
        "commit-lost",
        rules={COMMIT: Rule(Mode.LOSE)},
        expected_state=CONFIRMED,
        events=(
            "PLACED", "PRICED", "STOCK_RESERVED", "PAYMENT_CAPTURED", "STEP_FAILED",
            "STOCK_COMMITTED", "CONFIRMED",
        ),
        payment_state=payments_pb2.PAYMENT_STATE_CAPTURED,
        charges=1,
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", FAULTS, ids=[c.name for c in FAULTS])
async def test_a_failure_at_any_step_compensates_fully(tmp_path: Path, case: FaultCase) -> None:
    async with running_shop(tmp_path, stock=STOCK, payments=case.payments) as shop:
        shop.faults.rules.update(case.rules)
        order = await place(shop.order_stub, "key-1", ITEMS)

        assert order.state == case.expected_state
        assert case.reason in order.failure_reason
        events = await watch_all(shop.order_stub, order.order_id)
        assert event_names(events) == list(case.events)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert all(e.detail for e in events)

        # Stock: nothing left reserved; sold only if confirmed.
        await assert_books_balance(shop, [order], STOCK)
        # Money: the order's one payment (if any) ended in the expected state.
        assert shop.faults.calls[CHARGE] == case.charges
        if case.payment_state is None:
            assert shop.faults.payment_ids == set()
        else:
            (payment_id,) = shop.faults.payment_ids
            payment = await payment_of(shop, payment_id)
            assert payment.order_id == order.order_id
            assert payment.state == case.payment_state
            assert order.payment_id == payment_id
        if order.state == CANCELLED and "STOCK_RELEASED" in case.events:
            # The release left a tombstone: a reserve arriving late for this order is refused.
            late = await rpc_error(
                shop.inventory.ReserveStock(
                    inventory_pb2.ReserveStockRequest(
                        order_id=order.order_id,
                        items=[common_pb2.LineItem(product_id="sku-0001", quantity=2)],
                    )
                )
            )
            assert late.code() == grpc.StatusCode.ABORTED


@pytest.mark.parametrize(
    ("items", "currency", "reason"),
    [
        ((("sku-0001", 1), ("sku-9999", 1)), "USD", "items[1]: unknown product 'sku-9999'"),
        ((("sku-0001", 1),), "EUR", "priced in USD, the order in EUR"),
    ],
    ids=["unknown-product", "currency-mismatch"],
)
async def test_pricing_problems_cancel_before_any_stock_or_money_moves(
    tmp_path: Path, items: tuple[tuple[str, int], ...], currency: str, reason: str
) -> None:
    async with running_shop(tmp_path, stock=STOCK) as shop:
        order = await place(shop.order_stub, "key-1", items, currency_code=currency)
        assert order.state == CANCELLED
        assert reason in order.failure_reason
        assert shop.faults.calls[RESERVE] == 0
        assert shop.faults.calls[CHARGE] == 0
        await assert_books_balance(shop, [order], STOCK)


# --- 2. contention -------------------------------------------------------------------------------


async def test_200_concurrent_orders_for_50_units_sell_exactly_50(tmp_path: Path) -> None:
    stock = {"sku-0001": 50}
    slow_steps = {"step_deadline_seconds": 20, "saga_lease_seconds": 60}
    async with running_shop(tmp_path, stock=stock, orders=slow_steps) as shop:
        orders = await asyncio.gather(
            *(place(shop.order_stub, f"key-{n}", timeout=40) for n in range(200))
        )

        states = [o.state for o in orders]
        assert states.count(CONFIRMED) == 50
        assert states.count(CANCELLED) == 150
        assert all("out of stock" in o.failure_reason for o in orders if o.state == CANCELLED)
        level = await stock_of(shop, "sku-0001")
        assert (level.available, level.reserved, level.committed) == (0, 0, 50)
        # Only orders that got stock were charged, each once.
        assert shop.faults.calls[CHARGE] == 50
        await assert_books_balance(shop, orders, stock)


# --- 3. idempotency ------------------------------------------------------------------------------


async def test_retries_with_one_key_give_one_order_and_one_charge(tmp_path: Path) -> None:
    # Latency keeps the saga running while the concurrent retries arrive.
    async with running_shop(tmp_path, stock=STOCK, payments={"latency_ms": 300}) as shop:
        concurrent = await asyncio.gather(
            *(place(shop.order_stub, "same-key", ITEMS) for _ in range(10))
        )
        later = await place(shop.order_stub, "same-key", tuple(reversed(ITEMS)))

        ids = {o.order_id for o in [*concurrent, later]}
        assert len(ids) == 1
        assert all(o.state == CONFIRMED for o in [*concurrent, later])
        assert {o.payment_id for o in [*concurrent, later]} == set(shop.faults.payment_ids)
        assert len(shop.faults.payment_ids) == 1
        assert shop.faults.calls[CHARGE] == 1
        assert shop.faults.calls[RESERVE] == 1
        assert len(await list_all(shop.order_stub)) == 1
        await assert_books_balance(shop, [later], STOCK)


async def test_a_retry_after_a_lost_response_still_charges_once(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK, payments={"latency_ms": 300}) as shop:
        # The client gives up before the saga finishes; the saga carries on without it.
        first = await rpc_error(shop.order_stub.PlaceOrder(place_request("k", ITEMS), timeout=0.2))
        assert first.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        order = await place(shop.order_stub, "k", ITEMS)
        assert order.state == CONFIRMED
        assert shop.faults.calls[CHARGE] == 1
        assert len(shop.faults.payment_ids) == 1


async def test_a_key_reused_for_a_different_order_is_refused(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK) as shop:
        await place(shop.order_stub, "k", ITEMS)
        for request in (
            place_request("k", (("sku-0001", 3),)),
            place_request("k", ITEMS, customer_id="someone-else"),
        ):
            error = await rpc_error(shop.order_stub.PlaceOrder(request, timeout=5))
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "idempotency_key" in (error.details() or "")
        assert len(await list_all(shop.order_stub)) == 1


# --- 5. WatchOrder -------------------------------------------------------------------------------


async def test_watch_streams_a_live_saga_to_its_end(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK, payments={"latency_ms": 500}) as shop:
        stub = shop.order_stub
        placing = asyncio.create_task(place(stub, "k", ITEMS, customer_id="watcher"))
        order_id = ""
        for _ in range(200):  # bounded: the order appears as soon as PLACED is written
            listed = await list_all(stub, "watcher")
            if listed:
                order_id = listed[0].order_id
                break
            await asyncio.sleep(0.01)
        assert order_id, "order never appeared"

        request = orders_pb2.WatchOrderRequest(order_id=order_id)
        events: list[orders_pb2.OrderEvent] = []
        async for response in stub.WatchOrder(request, timeout=10):
            if not events:
                # The stream delivers while the saga is still running, not after.
                assert not placing.done()
            events.append(response.event)
        order = await placing

        assert event_names(events) == HAPPY
        assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6]
        assert all(e.order_id == order_id for e in events)
        times = [e.time.ToDatetime() for e in events]
        assert times == sorted(times)
        assert order.state == CONFIRMED


async def test_watch_on_another_replica_follows_a_saga_it_does_not_run(tmp_path: Path) -> None:
    """Two orders processes on one database (replicas, or workers of one): the watcher's
    process runs no saga for the order, so nothing in it wakes the watch; the log does."""
    async with running_shop(tmp_path, stock=STOCK, payments={"latency_ms": 300}) as shop:
        assert shop.orders_app is not None
        other = build_orders(shop.orders_app.settings.model_copy())
        async with other.running(), grpc.aio.insecure_channel(other.address) as channel:
            watcher = orders_pb2_grpc.OrderServiceStub(channel)
            placing = asyncio.create_task(place(shop.order_stub, "k", ITEMS, customer_id="w"))
            order_id = ""
            for _ in range(200):  # bounded: the order appears as soon as PLACED is written
                if listed := await list_all(watcher, "w"):
                    order_id = listed[0].order_id
                    break
                await asyncio.sleep(0.01)
            assert order_id, "order never appeared"
            request = orders_pb2.WatchOrderRequest(order_id=order_id)
            events = [r.event async for r in watcher.WatchOrder(request, timeout=10)]
            assert event_names(events) == HAPPY
            assert (await placing).state == CONFIRMED


async def test_watch_replays_after_a_sequence_and_ends(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK) as shop:
        order = await place(shop.order_stub, "k", ITEMS)
        assert event_names(await watch_all(shop.order_stub, order.order_id)) == HAPPY
        tail = await watch_all(shop.order_stub, order.order_id, after=4)
        assert [e.sequence for e in tail] == [5, 6]
        assert await watch_all(shop.order_stub, order.order_id, after=6) == []
        assert await watch_all(shop.order_stub, order.order_id, after=99) == []

        unknown = await rpc_error(watch_all(shop.order_stub, "no-such-order"))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        negative = await rpc_error(watch_all(shop.order_stub, order.order_id, after=-1))
        assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- 6. validation -------------------------------------------------------------------------------


def _bad_requests() -> list[tuple[str, orders_pb2.PlaceOrderRequest, str]]:
    ok = place_request("k", ITEMS)

    def changed(**fields: Any) -> orders_pb2.PlaceOrderRequest:
        request = orders_pb2.PlaceOrderRequest()
        request.CopyFrom(ok)
        for name, value in fields.items():
            if name == "items":
                del request.items[:]
                request.items.extend(
                    common_pb2.LineItem(product_id=p, quantity=q) for p, q in value
                )
            else:
                setattr(request, name, value)
        return request

    return [
        ("no-key", changed(idempotency_key=""), "idempotency_key"),
        ("long-key", changed(idempotency_key="k" * 129), "idempotency_key"),
        ("no-customer", changed(customer_id=""), "customer_id"),
        ("no-items", changed(items=[]), "items"),
        ("101-items", changed(items=[(f"sku-{n}", 1) for n in range(101)]), "items"),
        ("zero-qty", changed(items=[("sku-0001", 0)]), "items[0].quantity"),
        ("big-qty", changed(items=[("sku-0001", 1), ("sku-0002", 1001)]), "items[1].quantity"),
        ("no-product", changed(items=[("", 1)]), "items[0].product_id"),
        ("duplicate", changed(items=[("sku-0001", 1), ("sku-0001", 1)]), "items[1].product_id"),
        ("lower-currency", changed(currency_code="usd"), "currency_code"),
        ("no-currency", changed(currency_code=""), "currency_code"),
    ]


BAD = _bad_requests()


async def test_bad_input_names_the_field_and_writes_nothing(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK) as shop:
        for name, request, expected_field in BAD:
            error = await rpc_error(shop.order_stub.PlaceOrder(request, timeout=5))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert (error.details() or "").startswith(f"{expected_field}: "), name
            assert _violated_field(error) == expected_field, name

        assert await list_all(shop.order_stub) == []
        for table in ("order_events", "orders", "idempotency_keys"):
            assert count_rows(shop.orders_db, table) == 0, table
        # Nothing reached catalog, inventory or payments either.
        assert [m for m in shop.faults.calls if "OrderService" not in m] == []


def _violated_field(error: grpc.aio.AioRpcError) -> str:
    """The field named in the BadRequest detail the kit attaches to INVALID_ARGUMENT."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return str(bad.field_violations[0].field)
    return ""


async def test_reads_validate_their_input(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK) as shop:
        stub = shop.order_stub
        cases: list[tuple[Awaitable[object], str]] = [
            (stub.GetOrder(orders_pb2.GetOrderRequest(), timeout=5), "order_id"),
            (stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=-1), timeout=5), "page_size"),
            (stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=501), timeout=5), "page_size"),
            (
                stub.ListOrders(orders_pb2.ListOrdersRequest(page_token="nope"), timeout=5),
                "page_token",
            ),
        ]
        for call, expected_field in cases:
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _violated_field(error) == expected_field
        missing = await rpc_error(stub.GetOrder(orders_pb2.GetOrderRequest(order_id="x")))
        assert missing.code() == grpc.StatusCode.NOT_FOUND


# --- reads ---------------------------------------------------------------------------------------


async def test_get_and_list_orders_read_the_projection(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK) as shop:
        stub = shop.order_stub
        placed = [
            await place(stub, f"k{n}", ITEMS, customer_id="alice" if n % 2 else "bob")
            for n in range(5)
        ]
        got = (await stub.GetOrder(orders_pb2.GetOrderRequest(order_id=placed[0].order_id))).order
        assert got == placed[0]
        assert got.total == common_pb2.Money(currency_code="USD", amount_minor=2 * 2499 + 5900)
        assert [(line.product_id, line.quantity) for line in got.lines] == list(ITEMS)
        assert got.lines[0].unit_price.amount_minor == 2499
        assert got.created_at.ToDatetime() <= got.updated_at.ToDatetime()

        # Newest first, paged; the customer filter and its token go together.
        first = await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=2))
        assert [o.order_id for o in first.orders] == [placed[4].order_id, placed[3].order_id]
        everything = await list_all(stub)
        assert [o.order_id for o in everything] == [o.order_id for o in reversed(placed)]
        alice = await stub.ListOrders(
            orders_pb2.ListOrdersRequest(customer_id="alice", page_size=1)
        )
        assert [o.order_id for o in alice.orders] == [placed[3].order_id]
        rest = await stub.ListOrders(
            orders_pb2.ListOrdersRequest(
                customer_id="alice", page_size=1, page_token=alice.next_page_token
            )
        )
        assert [o.order_id for o in rest.orders] == [placed[1].order_id]
        assert rest.next_page_token == ""
        cross = await rpc_error(
            stub.ListOrders(
                orders_pb2.ListOrdersRequest(customer_id="bob", page_token=alice.next_page_token)
            )
        )
        assert cross.code() == grpc.StatusCode.INVALID_ARGUMENT


def _unsigned_token(before: int) -> str:
    """A token in the unsigned format ListOrders used to issue: any client could write one."""
    raw = json.dumps({"v": 1, "before": before, "customer_id": ""}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_forged_and_edited_page_tokens_are_invalid_argument(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK) as shop:
        stub = shop.order_stub
        for n in range(3):
            await place(stub, f"k{n}", ITEMS)
        first = await stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=1), timeout=5)
        payload, _, mac = first.next_page_token.partition(".")
        edited = f"{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{mac}"
        for token in (
            _unsigned_token(2**70),  # once INTERNAL: OverflowError binding it in SQLite
            _unsigned_token(1),
            edited,
            f"{payload}.",
            "x" * 5000,
        ):
            error = await rpc_error(
                stub.ListOrders(orders_pb2.ListOrdersRequest(page_token=token), timeout=5)
            )
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, token
            assert _violated_field(error) == "page_token"
        # The real token still pages, and is opaque (no readable position in it).
        rest = await stub.ListOrders(
            orders_pb2.ListOrdersRequest(page_token=first.next_page_token), timeout=5
        )
        assert len(rest.orders) == 2
        assert '"before"' not in first.next_page_token


async def test_a_place_order_that_is_not_utf8_is_invalid_argument(tmp_path: Path) -> None:
    async with running_shop(tmp_path, stock=STOCK) as shop:
        assert shop.orders_app is not None
        async with grpc.aio.insecure_channel(shop.orders_app.address) as channel:
            send: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/grpcmesh.shop.v1.OrderService/PlaceOrder"
            )
            # idempotency_key (field 1) holding bytes that are not UTF-8
            error = await rpc_error(send(b"\x0a\x03k\xc3\x28", timeout=5))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in (error.details() or "")
        assert "class" not in (error.details() or "")
        assert count_rows(shop.orders_db, "order_events") == 0
