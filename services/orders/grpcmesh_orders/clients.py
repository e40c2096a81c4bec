"""Thin adapters for the services the saga calls, with a deadline on every call.

Channels come from the kit (``app.channels.channel(name)``) at call time, so a reloaded
configuration (new targets, a sidecar) takes effect without restarting. Every failure surfaces
as :class:`CallFailed` carrying the gRPC status name and whether the request certainly never
left (:func:`never_sent`), which is all the saga decides on.
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
    def __init__(self, service: str, code: str, message: str, *, sent: bool = True) -> None:
        super().__init__(f"{service}: {code}: {message}{'' if sent else ' [never sent]'}")
        self.service = service
        self.code = code
        self.message = message
        # False only when the request certainly did not reach the callee (see never_sent).
        self.sent = sent


UPSTREAM_TIME_HEADER = "x-envoy-upstream-service-time"
"""Envoy's router adds it to every response that came from upstream, never to its own local
replies; a reply without it was made by the caller's own sidecar."""
ATTEMPT_COUNT_HEADER = "x-envoy-attempt-count"

# Local replies of the caller's sidecar sent before any byte of the request went upstream:
# no endpoint to pick (UH), the TCP connection never came up (UF), a circuit breaker (UO).
_NO_HEALTHY_UPSTREAM = "no healthy upstream"
_RESET_PREFIX = "upstream connect error or disconnect/reset before headers. reset reason: "
_UNSENT_RESET_REASONS = (
    "connection failure",
    "local connection failure",
    "remote connection failure",
    "overflow",
)
# gRPC's own client found no connection to send on (the sidecar itself is down, or no
# sidecar and the target refuses connections): the call failed before it was written.
_CLIENT_UNSENT_PREFIXES = ("failed to connect to all addresses", "DNS resolution failed")


def never_sent(error: grpc.aio.AioRpcError) -> bool:
    """Whether a failed call certainly never reached the callee, so it had no effect there.

    Only UNAVAILABLE qualifies, and only when the reply was made on this side of the mesh:
    either gRPC's client never had a connection to write it on, or the caller's own Envoy
    sidecar answered it locally (no ``x-envoy-upstream-service-time`` in the response) with a
    reason given before anything is forwarded. A reply relayed from upstream - the callee's
    sidecar included - carries that header and is never "not sent"; a route timeout
    ("upstream request timeout") or a reset after connecting ("connection termination") is
    in doubt. If the sidecar reports it retried (``x-envoy-attempt-count`` above 1, or
    "retried and the latest reset reason"), an earlier attempt may have landed: in doubt.
    docs/reliability.md records how each case was measured against Envoy.
    """
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = error.details() or ""
    metadata = [*(error.initial_metadata() or ()), *(error.trailing_metadata() or ())]
    headers = {str(key).lower(): value for key, value in metadata}
    if not headers and details.startswith(_CLIENT_UNSENT_PREFIXES):
        return True
    if UPSTREAM_TIME_HEADER in headers or headers.get("server") != "envoy":
        return False
    attempts = headers.get(ATTEMPT_COUNT_HEADER)
    if attempts is not None and str(attempts) != "1":
        return False
    if details == _NO_HEALTHY_UPSTREAM:
        return True
    reason = details.removeprefix(_RESET_PREFIX)
    return reason != details and reason.startswith(_UNSENT_RESET_REASONS)


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
            raise CallFailed(
                service, exc.code().name, exc.details() or "", sent=not never_sent(exc)
            ) from exc
        except UnknownService as exc:
            # A missing target is a deployment error, but to the saga it is an unreachable
            # dependency: nothing was sent.
            raise CallFailed(service, "FAILED_PRECONDITION", str(exc), sent=False) from exc

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
