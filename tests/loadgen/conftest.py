"""A tiny in-process OrderService on 127.0.0.1 for driving the load generator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from grpcmesh.shop.v1 import orders_pb2, orders_pb2_grpc


@dataclass
class FakeOrders(orders_pb2_grpc.OrderServiceServicer):
    """Answers PlaceOrder after ``delay_s``; every ``fail_every``-th call (by arrival) fails with
    ``fail_code``, every ``cancel_every``-th is CANCELLED, the rest CONFIRMED."""

    delay_s: float = 0.0
    fail_every: int = 0
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    cancel_every: int = 0
    state: orders_pb2.OrderState.ValueType | None = None
    requests: list[orders_pb2.PlaceOrderRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def PlaceOrder(
        self,
        request: orders_pb2.PlaceOrderRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> orders_pb2.PlaceOrderResponse:
        self.requests.append(request)
        n = len(self.requests)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        if self.fail_every and n % self.fail_every == 0:
            await context.abort(self.fail_code, f"fake failure {n}")
        if self.state is not None:
            state = self.state
        elif self.cancel_every and n % self.cancel_every == 0:
            state = orders_pb2.ORDER_STATE_CANCELLED
        else:
            state = orders_pb2.ORDER_STATE_CONFIRMED
        order = orders_pb2.Order(
            order_id=f"order-{n}", customer_id=request.customer_id, state=state
        )
        return orders_pb2.PlaceOrderResponse(order=order)

    # The load generator only places orders; the rest of the service is out of scope here.
    def GetOrder(self, request: object, context: object) -> orders_pb2.GetOrderResponse:
        raise NotImplementedError

    def ListOrders(self, request: object, context: object) -> orders_pb2.ListOrdersResponse:
        raise NotImplementedError

    def WatchOrder(
        self, request: object, context: object
    ) -> Iterator[orders_pb2.WatchOrderResponse]:
        raise NotImplementedError


@dataclass
class FakeServer:
    servicer: FakeOrders
    address: str


@pytest.fixture
async def fake_orders() -> AsyncIterator[FakeServer]:
    servicer = FakeOrders()
    server = grpc.aio.server()
    orders_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield FakeServer(servicer=servicer, address=f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=None)
