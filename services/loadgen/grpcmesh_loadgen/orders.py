"""PlaceOrder load: random but reproducible orders, sent through the engine."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence

import grpc

from grpcmesh.shop.v1 import common_pb2, orders_pb2, orders_pb2_grpc
from grpcmesh_loadgen.engine import Answer, Call, drive
from grpcmesh_loadgen.schedule import load_mode
from grpcmesh_loadgen.stats import LoadReport, summarize

PRODUCTS: tuple[str, ...] = tuple(f"sku-{n:04d}" for n in range(1, 9))
"""The reference catalog's products."""

CUSTOMERS: tuple[str, ...] = tuple(f"customer-{n}" for n in range(1, 6))

TERMINAL_OUTCOMES = frozenset({"CONFIRMED", "CANCELLED"})
"""PlaceOrder returns a terminal order; a cancelled order is a business outcome, not a failure."""

MAX_ITEMS_PER_ORDER = 3
MAX_QUANTITY = 3


class LoadgenError(Exception):
    """The run could not start (e.g. the target never became reachable)."""


class OrderFactory:
    """Builds PlaceOrder requests. Same seed, same orders; keys are unique per ``run_id``."""

    def __init__(
        self,
        run_id: str,
        *,
        seed: int | None = None,
        currency: str = "USD",
        products: Sequence[str] = PRODUCTS,
        customers: Sequence[str] = CUSTOMERS,
    ) -> None:
        self.run_id = run_id
        self._rng = random.Random(seed)
        self._currency = currency
        self._products = tuple(products)
        self._customers = tuple(customers)

    def request(self, index: int) -> orders_pb2.PlaceOrderRequest:
        count = self._rng.randint(1, min(MAX_ITEMS_PER_ORDER, len(self._products)))
        items = [
            common_pb2.LineItem(product_id=p, quantity=self._rng.randint(1, MAX_QUANTITY))
            # sample(): each product at most once per order, as the API requires
            for p in sorted(self._rng.sample(self._products, count))
        ]
        return orders_pb2.PlaceOrderRequest(
            idempotency_key=f"loadgen-{self.run_id}-{index:07d}",
            customer_id=self._rng.choice(self._customers),
            items=items,
            currency_code=self._currency,
        )


def order_outcome(response: orders_pb2.PlaceOrderResponse) -> str:
    """ "CONFIRMED", "CANCELLED", or the name of any other (unexpected) state."""
    return orders_pb2.OrderState.Name(response.order.state).removeprefix("ORDER_STATE_")


def placer(
    channel: grpc.aio.Channel,
    requests: Sequence[orders_pb2.PlaceOrderRequest],
    *,
    deadline_s: float,
) -> Call:
    """The engine's call for PlaceOrder: call ``index`` places ``requests[index]`` on
    ``channel`` and answers with the order's outcome or the gRPC status it failed with."""
    stub = orders_pb2_grpc.OrderServiceStub(channel)

    async def place(index: int) -> Answer:
        try:
            response = await stub.PlaceOrder(requests[index], timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return Answer(status=exc.code().name, detail=exc.details() or "")
        return Answer(outcome=order_outcome(response))

    return place


async def run_load(
    target: str,
    orders: int,
    rate: float,
    *,
    concurrency: int = 64,
    deadline_s: float = 5.0,
    seed: int | None = None,
    run_id: str | None = None,
    currency: str = "USD",
    authority: str | None = None,
    connect_timeout_s: float = 10.0,
    stop: asyncio.Event | None = None,
) -> LoadReport:
    """Place ``orders`` orders on the OrderService at ``target`` and report what happened.

    ``rate`` is orders per second on an open-loop schedule, or ``math.inf`` for a closed loop
    that keeps ``concurrency`` orders in flight (saturation throughput). ``deadline_s`` is each
    call's gRPC deadline. ``authority`` overrides ``:authority`` (for an ingress that routes on
    it). ``stop``, once set, ends the load early (no order starts after it; those in flight
    finish): ``orders`` is then a bound, and the report covers the orders placed. Raises
    ``LoadgenError`` if the target does not accept a connection in time.
    """
    mode = load_mode(rate)
    factory = OrderFactory(run_id or uuid.uuid4().hex[:12], seed=seed, currency=currency)
    # Built up front so request construction does not delay scheduled sends.
    requests = [factory.request(i) for i in range(orders)]
    options = [("grpc.default_authority", authority)] if authority else []
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), connect_timeout_s)
        except TimeoutError:
            raise LoadgenError(
                f"cannot connect to {target} within {connect_timeout_s:g}s"
            ) from None
        place = placer(channel, requests, deadline_s=deadline_s)
        run = await drive(place, count=orders, rate=rate, concurrency=concurrency, stop=stop)
    return summarize(
        run.results,
        target=target,
        mode=mode,
        planned=orders if stop is None else len(run.results),
        target_rate=rate,
        concurrency=concurrency,
        elapsed_s=run.elapsed_s,
        expected_outcomes=TERMINAL_OUTCOMES,
    )
