"""Shared helpers for the orders tests: the four services in-process on loopback, a test-only
fault-injecting server interceptor, and checks that stock and money add up.
"""

from __future__ import annotations

import asyncio
import enum
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
import pytest

from grpcmesh.shop.v1 import (
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    orders_pb2,
    orders_pb2_grpc,
    payments_pb2,
    payments_pb2_grpc,
)
from grpcmesh_catalog.main import build_app as build_catalog
from grpcmesh_catalog.settings import CatalogSettings
from grpcmesh_control.local.process import ManagedProcess
from grpcmesh_inventory.main import build_app as build_inventory
from grpcmesh_inventory.settings import InventorySettings
from grpcmesh_kit import ServiceApp
from grpcmesh_orders.books import BooksReport, audit
from grpcmesh_orders.main import build_app as build_orders
from grpcmesh_orders.settings import OrdersSettings
from grpcmesh_payments.main import build_app as build_payments
from grpcmesh_payments.settings import PaymentsSettings
from tests.processes import service_process

if TYPE_CHECKING:
    # Exist only in the generated stubs, for typing the async stubs.
    from grpcmesh.shop.v1.inventory_pb2_grpc import InventoryServiceAsyncStub
    from grpcmesh.shop.v1.orders_pb2_grpc import OrderServiceAsyncStub
    from grpcmesh.shop.v1.payments_pb2_grpc import PaymentServiceAsyncStub

Req = TypeVar("Req")
Resp = TypeVar("Resp")

PKG = "/grpcmesh.shop.v1."
GET_PRODUCT = f"{PKG}CatalogService/GetProduct"
RESERVE = f"{PKG}InventoryService/ReserveStock"
RELEASE = f"{PKG}InventoryService/ReleaseStock"
COMMIT = f"{PKG}InventoryService/CommitStock"
CHARGE = f"{PKG}PaymentService/Charge"
REFUND = f"{PKG}PaymentService/Refund"

# Loopback, OS-assigned ports, no drain wait: what in-process tests want.
BASE: dict[str, Any] = {"port": 0, "metrics_port": 0, "drain_seconds": 0, "grace_seconds": 1}
# Fast compensation backoff so fault tests stay quick.
ORDERS_BASE: dict[str, Any] = {
    **BASE,
    "step_deadline_seconds": 5.0,
    "compensation_backoff_seconds": 0.01,
    "compensation_max_backoff_seconds": 0.1,
}


# --- fault injection -----------------------------------------------------------------------------


class Mode(enum.Enum):
    REJECT = "reject"  # fail before the servicer runs: nothing happens
    LOSE = "lose"  # run the servicer, then fail: the effect happens, the caller sees an error


@dataclass
class Rule:
    mode: Mode
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    # How many calls fail; None: every call until the rule is removed.
    times: int | None = 1

    def take(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass
class Threshold:
    method: str
    count: int
    reached: asyncio.Event = field(default_factory=asyncio.Event)


class FaultInjector(grpc.aio.ServerInterceptor):
    """Test-only: fails chosen methods per a :class:`Rule`, counts every call, and records the
    payment ids Charge produced (so tests can audit every payment without a list RPC)."""

    def __init__(self) -> None:
        self.rules: dict[str, Rule] = {}
        self.calls: Counter[str] = Counter()
        self.payment_ids: set[str] = set()
        self._thresholds: list[Threshold] = []

    def when(self, method: str, count: int) -> asyncio.Event:
        """An event set once ``method`` has been called ``count`` times."""
        threshold = Threshold(method, count)
        self._thresholds.append(threshold)
        self._check(method)
        return threshold.reached

    def _check(self, method: str) -> None:
        for t in self._thresholds:
            if t.method == method and self.calls[method] >= t.count:
                t.reached.set()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(PKG):
            return handler
        # The stubs type behaviours as sync; on a grpc.aio server they are coroutines.
        inner = cast(
            "Callable[[Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]",
            handler.unary_unary,
        )

        async def behaviour(request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
            self.calls[method] += 1
            self._check(method)
            rule = self.rules.get(method)
            failing = rule is not None and rule.take()
            if rule is not None and failing and rule.mode is Mode.REJECT:
                await context.abort(rule.code, f"injected {rule.code.name} before {method}")
            response = await inner(request, context)
            if isinstance(response, payments_pb2.ChargeResponse):
                self.payment_ids.add(response.payment.payment_id)
            if rule is not None and failing:
                await context.abort(rule.code, f"injected {rule.code.name} after {method}")
            return response

        return grpc.unary_unary_rpc_method_handler(
            behaviour, handler.request_deserializer, handler.response_serializer
        )


# --- the shop ------------------------------------------------------------------------------------


@dataclass
class Shop:
    tmp_path: Path
    faults: FaultInjector
    catalog: ServiceApp[CatalogSettings]
    inventory_app: ServiceApp[InventorySettings]
    payments_app: ServiceApp[PaymentsSettings]
    inventory: InventoryServiceAsyncStub
    payments: PaymentServiceAsyncStub
    stack: AsyncExitStack
    orders_app: ServiceApp[OrdersSettings] | None = None
    orders: OrderServiceAsyncStub | None = None

    @property
    def targets(self) -> dict[str, str]:
        return {
            "catalog": self.catalog.address,
            "inventory": self.inventory_app.address,
            "payments": self.payments_app.address,
        }

    @property
    def orders_db(self) -> Path:
        return self.tmp_path / "orders.db"

    @property
    def order_stub(self) -> OrderServiceAsyncStub:
        assert self.orders is not None, "orders is not running in-process"
        return self.orders

    async def start_orders(self, **overrides: Any) -> None:
        settings = OrdersSettings(
            **{
                **ORDERS_BASE,
                "db_path": str(self.orders_db),
                "targets": self.targets,
                **overrides,
            }
        )
        app = build_orders(settings)
        app.add_interceptor(self.faults)
        self.orders_app = await self.stack.enter_async_context(app.running())
        self.orders = orders_pb2_grpc.OrderServiceStub(
            await self.stack.enter_async_context(grpc.aio.insecure_channel(self.orders_app.address))
        )

    async def restart_orders(self, **overrides: Any) -> None:
        """Stops orders (its sagas stop where they are) and starts it again on the same db."""
        assert self.orders_app is not None
        await self.orders_app.stop()  # the stack's later stop of this app is a no-op
        await self.start_orders(**overrides)


@asynccontextmanager
async def running_shop(
    tmp_path: Path,
    *,
    stock: dict[str, int] | None = None,
    payments: dict[str, Any] | None = None,
    orders: dict[str, Any] | None = None,
    with_orders: bool = True,
) -> AsyncIterator[Shop]:
    """Catalog, inventory and payments (and, unless ``with_orders`` is False, orders) on
    127.0.0.1, each with its own database under ``tmp_path``."""
    faults = FaultInjector()
    async with AsyncExitStack() as stack:
        catalog = build_catalog(CatalogSettings(**BASE, db_path=str(tmp_path / "catalog.db")))
        inventory = build_inventory(
            InventorySettings(
                **BASE,
                db_path=str(tmp_path / "inventory.db"),
                seed_stock=stock if stock is not None else {"sku-0001": 100, "sku-0002": 100},
            )
        )
        pay = build_payments(
            PaymentsSettings(**BASE, db_path=str(tmp_path / "payments.db"), **(payments or {}))
        )
        for app in (catalog, inventory, pay):
            app.add_interceptor(faults)
            await stack.enter_async_context(app.running())
        shop = Shop(
            tmp_path=tmp_path,
            faults=faults,
            catalog=catalog,
            inventory_app=inventory,
            payments_app=pay,
            inventory=inventory_pb2_grpc.InventoryServiceStub(
                await stack.enter_async_context(grpc.aio.insecure_channel(inventory.address))
            ),
            payments=payments_pb2_grpc.PaymentServiceStub(
                await stack.enter_async_context(grpc.aio.insecure_channel(pay.address))
            ),
            stack=stack,
        )
        if with_orders:
            await shop.start_orders(**(orders or {}))
        yield shop


# --- orders as a process ------------------------------------------------------------------------


@asynccontextmanager
async def orders_process(
    shop: Shop, name: str, *, settings: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[ManagedProcess, str]]:
    """``python -m grpcmesh_orders`` on free loopback ports, configured through GRPCMESH_*
    (plus ``settings``, e.g. ``{"saga_lease_seconds": "2"}``); yields (process, address) once
    it reports SERVING, stops it on exit. Replicas started with one ``shop`` share its database."""
    env = {
        "GRPCMESH_DB_PATH": str(shop.orders_db),
        "GRPCMESH_TARGETS": json.dumps(shop.targets),
        "GRPCMESH_COMPENSATION_BACKOFF_SECONDS": "0.01",
        "GRPCMESH_COMPENSATION_MAX_BACKOFF_SECONDS": "0.1",
        **{f"GRPCMESH_{key.upper()}": value for key, value in (settings or {}).items()},
    }
    workdir = shop.tmp_path / name
    workdir.mkdir()
    async with service_process("orders", "grpcmesh_orders", workdir, env) as orders:
        yield orders.process, orders.address


# --- requests and audits -------------------------------------------------------------------------


def place_request(
    key: str,
    items: Sequence[tuple[str, int]] = (("sku-0001", 1),),
    *,
    customer_id: str = "cust-1",
    currency_code: str = "USD",
) -> orders_pb2.PlaceOrderRequest:
    return orders_pb2.PlaceOrderRequest(
        idempotency_key=key,
        customer_id=customer_id,
        items=[common_pb2.LineItem(product_id=p, quantity=q) for p, q in items],
        currency_code=currency_code,
    )


async def place(
    stub: OrderServiceAsyncStub, key: str, *args: Any, timeout: float = 15, **kwargs: Any
) -> orders_pb2.Order:
    response = await stub.PlaceOrder(place_request(key, *args, **kwargs), timeout=timeout)
    return response.order


async def watch_all(
    stub: OrderServiceAsyncStub, order_id: str, after: int = 0, timeout: float = 10
) -> list[orders_pb2.OrderEvent]:
    request = orders_pb2.WatchOrderRequest(order_id=order_id, after_sequence=after)
    return [r.event async for r in stub.WatchOrder(request, timeout=timeout)]


def event_names(events: Sequence[orders_pb2.OrderEvent]) -> list[str]:
    return [
        orders_pb2.OrderEventType.Name(e.type).removeprefix("ORDER_EVENT_TYPE_") for e in events
    ]


async def list_all(stub: OrderServiceAsyncStub, customer_id: str = "") -> list[orders_pb2.Order]:
    orders: list[orders_pb2.Order] = []
    token = ""
    for _ in range(1000):  # bounded: each page advances the token
        page = await stub.ListOrders(
            orders_pb2.ListOrdersRequest(customer_id=customer_id, page_size=500, page_token=token),
            timeout=10,
        )
        orders.extend(page.orders)
        token = page.next_page_token
        if not token:
            return orders
    raise AssertionError("ListOrders kept returning pages")


async def stock_of(shop: Shop, product_id: str) -> inventory_pb2.StockLevel:
    response = await shop.inventory.GetStock(
        inventory_pb2.GetStockRequest(product_id=product_id), timeout=5
    )
    return response.stock


async def payment_of(shop: Shop, payment_id: str) -> payments_pb2.Payment:
    response = await shop.payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=payment_id), timeout=5
    )
    return response.payment


async def assert_books_balance(
    shop: Shop, orders: Sequence[orders_pb2.Order], initial_stock: dict[str, int]
) -> None:
    """Every order is terminal; no stock is left reserved; sold stock matches the confirmed
    orders; every payment that was ever captured belongs to a confirmed order or was refunded,
    and each confirmed order has exactly its one captured payment."""
    by_id = {o.order_id: o for o in orders}
    assert all(o.state != orders_pb2.ORDER_STATE_PENDING for o in orders)
    confirmed = [o for o in orders if o.state == orders_pb2.ORDER_STATE_CONFIRMED]
    for product_id, initial in initial_stock.items():
        level = await stock_of(shop, product_id)
        sold = sum(
            line.quantity for o in confirmed for line in o.lines if line.product_id == product_id
        )
        assert level.reserved == 0, f"{product_id}: stock left reserved"
        assert level.committed == sold, f"{product_id}: committed {level.committed} != {sold}"
        assert level.available == initial - sold
    captured_by_order: Counter[str] = Counter()
    for payment_id in shop.faults.payment_ids:
        payment = await payment_of(shop, payment_id)
        if payment.state == payments_pb2.PAYMENT_STATE_CAPTURED:
            order = by_id.get(payment.order_id)
            assert order is not None and order.state == orders_pb2.ORDER_STATE_CONFIRMED, (
                f"payment {payment_id} captured for order {payment.order_id} not confirmed"
            )
            captured_by_order[payment.order_id] += 1
    for order in confirmed:
        assert captured_by_order[order.order_id] == 1
        assert order.payment_id
        assert (await payment_of(shop, order.payment_id)).state == (
            payments_pb2.PAYMENT_STATE_CAPTURED
        )


def books_of(shop: Shop) -> BooksReport:
    """The books checker run over the shop's three databases."""
    return audit(shop.orders_db, shop.tmp_path / "inventory.db", shop.tmp_path / "payments.db")


def assert_books_from_stores(shop: Shop) -> BooksReport:
    report = books_of(shop)
    assert report.balanced, report.summary()
    return report


def count_rows(db: Path, table: str) -> int:
    """Reads the orders service's own database, to prove a request wrote nothing."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (count,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(count)
    finally:
        conn.close()


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value
