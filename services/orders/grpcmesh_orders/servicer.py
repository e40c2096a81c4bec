"""OrderService over gRPC: PlaceOrder starts (or joins) a saga; reads use the projection."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from grpcmesh.shop.v1 import common_pb2, orders_pb2, orders_pb2_grpc
from grpcmesh_kit.errors import NotFound, Unavailable
from grpcmesh_kit.pagetokens import PageTokens
from grpcmesh_orders import validation
from grpcmesh_orders.events import Event, EventType, Money, OrderState, OrderView
from grpcmesh_orders.runner import OrderNotifier, SagaRunner
from grpcmesh_orders.storage import OrderRepository

Context = grpc.aio.ServicerContext[Any, Any]

_STATES: dict[OrderState, orders_pb2.OrderState.ValueType] = {
    OrderState.PENDING: orders_pb2.ORDER_STATE_PENDING,
    OrderState.CONFIRMED: orders_pb2.ORDER_STATE_CONFIRMED,
    OrderState.CANCELLED: orders_pb2.ORDER_STATE_CANCELLED,
}
_EVENT_TYPES: dict[EventType, orders_pb2.OrderEventType.ValueType] = {
    t: orders_pb2.OrderEventType.Value(f"ORDER_EVENT_TYPE_{t.value}") for t in EventType
}


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _money(money: Money) -> common_pb2.Money:
    return common_pb2.Money(currency_code=money.currency_code, amount_minor=money.amount_minor)


def order_to_proto(view: OrderView) -> orders_pb2.Order:
    if view.lines:
        lines = [
            orders_pb2.OrderLine(
                product_id=line.product_id,
                quantity=line.quantity,
                unit_price=_money(line.unit_price),
            )
            for line in view.lines
        ]
    else:
        # Not priced (yet, or ever): the lines as ordered, without prices.
        lines = [
            orders_pb2.OrderLine(product_id=i.product_id, quantity=i.quantity) for i in view.items
        ]
    order = orders_pb2.Order(
        order_id=view.order_id,
        customer_id=view.customer_id,
        lines=lines,
        state=_STATES[view.state],
        failure_reason=view.failure_reason,
        payment_id=view.payment_id,
        created_at=_timestamp(view.created_at),
        updated_at=_timestamp(view.updated_at),
    )
    if view.total is not None:
        order.total.CopyFrom(_money(view.total))
    return order


def event_to_proto(event: Event) -> orders_pb2.OrderEvent:
    return orders_pb2.OrderEvent(
        order_id=event.order_id,
        sequence=event.sequence,
        type=_EVENT_TYPES[event.type],
        time=_timestamp(event.time),
        detail=event.detail,
    )


def new_order_id() -> str:
    return str(uuid.uuid4())


class OrderServicer(orders_pb2_grpc.OrderServiceServicer):
    def __init__(
        self,
        repo: OrderRepository,
        runner: SagaRunner,
        notifier: OrderNotifier,
        order_ids: Callable[[], str] = new_order_id,
        watch_poll_seconds: Callable[[], float] = lambda: 0.5,
    ) -> None:
        self._repo = repo
        self._runner = runner
        self._notifier = notifier
        self._watch_poll_seconds = watch_poll_seconds
        self._order_ids = order_ids
        # Set by the start hook once the store is open (the key lives in the database).
        self.page_tokens: PageTokens | None = None

    async def PlaceOrder(
        self, request: orders_pb2.PlaceOrderRequest, context: Context
    ) -> orders_pb2.PlaceOrderResponse:
        command = validation.validate_place_order(
            request.idempotency_key, request.customer_id, request.items, request.currency_code
        )
        placement = await self._repo.place(command, self._order_ids(), self._runner.lease())
        # Joins the saga if this process is already running it (a concurrent retry); otherwise
        # starts it, which for a finished order just reads the log back.
        saga = self._runner.ensure(placement.order_id)
        # asyncio.wait: when our caller gives up, the saga carries on regardless.
        done, _ = await asyncio.wait({saga}, timeout=context.time_remaining())
        if not done:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"order {placement.order_id} is still in progress; "
                "retry with the same idempotency_key to get its outcome",
            )
        view = saga.result()
        if not view.state.terminal:
            raise Unavailable(
                f"order {placement.order_id} is still compensating a failed step; "
                "retry with the same idempotency_key"
            )
        return orders_pb2.PlaceOrderResponse(order=order_to_proto(view))

    async def GetOrder(
        self, request: orders_pb2.GetOrderRequest, context: Context
    ) -> orders_pb2.GetOrderResponse:
        order_id = validation.validate_order_id(request.order_id)
        view = await self._repo.get(order_id)
        if view is None:
            raise NotFound(f"order {order_id!r} not found")
        return orders_pb2.GetOrderResponse(order=order_to_proto(view))

    async def ListOrders(
        self, request: orders_pb2.ListOrdersRequest, context: Context
    ) -> orders_pb2.ListOrdersResponse:
        tokens = self.page_tokens
        if tokens is None:
            raise Unavailable("orders is starting; retry")
        query = validation.validate_list_orders(
            request.customer_id, request.page_size, request.page_token, tokens
        )
        rows = await self._repo.page(query)
        page = rows[: query.limit]
        token = ""
        if len(rows) > query.limit:
            token = validation.encode_page_token(tokens, page[-1].position, query.customer_id)
        return orders_pb2.ListOrdersResponse(
            orders=[order_to_proto(row.view) for row in page], next_page_token=token
        )

    async def WatchOrder(
        self, request: orders_pb2.WatchOrderRequest, context: Context
    ) -> AsyncIterator[orders_pb2.WatchOrderResponse]:
        order_id = validation.validate_order_id(request.order_id)
        cursor = validation.validate_after_sequence(request.after_sequence)
        while True:
            wake = self._notifier.waiter(order_id)  # before the read: see OrderNotifier
            state, events = await self._repo.watch_batch(order_id, cursor)
            if state is None:
                raise NotFound(f"order {order_id!r} not found")
            for event in events:
                yield orders_pb2.WatchOrderResponse(event=event_to_proto(event))
                cursor = event.sequence
                if event.type.terminal:
                    return
            if state.terminal:
                return  # the terminal event was at or before after_sequence
            # Woken at once by a saga of this process; one in another process (a replica or
            # worker on the same database) is seen on the next read.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._watch_poll_seconds())
