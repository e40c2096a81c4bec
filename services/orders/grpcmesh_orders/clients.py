"""Thin adapters for the services the saga calls, with a deadline on every call.

Channels come from the kit (``app.channels.channel(name)``) at call time, so a reloaded
configuration (new targets, a sidecar) takes effect without restarting. Every failure surfaces
as :class:`CallFailed` carrying the gRPC status name, which is all the saga decides on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from grpcmesh.shop.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    payments_pb2,
    payments_pb2_grpc,
)
from grpcmesh_kit import UnknownService
from grpcmesh_orders.events import LineItem, Money

T = TypeVar("T")


class CallFailed(Exception):
    def __init__(self, service: str, code: str, message: str) -> None:
        super().__init__(f"{service}: {code}: {message}")
        self.service = service
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PaymentOutcome:
    payment_id: str
    captured: bool
    amount: Money
    decline_reason: str


class ShopClients:
    def __init__(
        self, channel: Callable[[str], grpc.aio.Channel], deadline: Callable[[], float]
    ) -> None:
        self._channel = channel
        self._deadline = deadline

    async def _call(self, service: str, call: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        try:
            return await call(self._channel(service))
        except grpc.aio.AioRpcError as exc:
            raise CallFailed(service, exc.code().name, exc.details() or "") from exc
        except UnknownService as exc:
            # A missing target is a deployment error, but to the saga it is an unreachable
            # dependency: nothing was sent.
            raise CallFailed(service, "FAILED_PRECONDITION", str(exc)) from exc

    async def price(self, product_id: str) -> Money:
        async def call(channel: grpc.aio.Channel) -> Money:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            response = await stub.GetProduct(
                catalog_pb2.GetProductRequest(product_id=product_id), timeout=self._deadline()
            )
            price = response.product.price
            return Money(price.currency_code, price.amount_minor)

        return await self._call("catalog", call)

    async def reserve(self, order_id: str, items: Sequence[LineItem]) -> None:
        async def call(channel: grpc.aio.Channel) -> None:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            await stub.ReserveStock(
                inventory_pb2.ReserveStockRequest(
                    order_id=order_id,
                    items=[
                        common_pb2.LineItem(product_id=i.product_id, quantity=i.quantity)
                        for i in items
                    ],
                ),
                timeout=self._deadline(),
            )

        await self._call("inventory", call)

    async def release(self, order_id: str) -> None:
        async def call(channel: grpc.aio.Channel) -> None:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            await stub.ReleaseStock(
                inventory_pb2.ReleaseStockRequest(order_id=order_id), timeout=self._deadline()
            )

        await self._call("inventory", call)

    async def commit(self, order_id: str) -> None:
        async def call(channel: grpc.aio.Channel) -> None:
            stub = inventory_pb2_grpc.InventoryServiceStub(channel)
            await stub.CommitStock(
                inventory_pb2.CommitStockRequest(order_id=order_id), timeout=self._deadline()
            )

        await self._call("inventory", call)

    async def charge(
        self, idempotency_key: str, order_id: str, customer_id: str, amount: Money
    ) -> PaymentOutcome:
        async def call(channel: grpc.aio.Channel) -> PaymentOutcome:
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            response = await stub.Charge(
                payments_pb2.ChargeRequest(
                    idempotency_key=idempotency_key,
                    order_id=order_id,
                    customer_id=customer_id,
                    amount=common_pb2.Money(
                        currency_code=amount.currency_code, amount_minor=amount.amount_minor
                    ),
                ),
                timeout=self._deadline(),
            )
            payment = response.payment
            return PaymentOutcome(
                payment_id=payment.payment_id,
                captured=payment.state == payments_pb2.PAYMENT_STATE_CAPTURED,
                amount=Money(payment.amount.currency_code, payment.amount.amount_minor),
                decline_reason=payment.decline_reason,
            )

        return await self._call("payments", call)

    async def refund(self, idempotency_key: str, payment_id: str) -> None:
        async def call(channel: grpc.aio.Channel) -> None:
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            await stub.Refund(
                payments_pb2.RefundRequest(idempotency_key=idempotency_key, payment_id=payment_id),
                timeout=self._deadline(),
            )

        await self._call("payments", call)
