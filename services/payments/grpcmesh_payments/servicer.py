"""PaymentService over gRPC: validate, inject configured failures, run one store transaction."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from grpcmesh.shop.v1 import common_pb2, payments_pb2, payments_pb2_grpc
from grpcmesh_kit import NotFound, Store
from grpcmesh_payments import domain, storage
from grpcmesh_payments.domain import FailureCode, Money, Payment, PaymentState
from grpcmesh_payments.settings import PaymentsSettings

Context = grpc.aio.ServicerContext[Any, Any]

_STATES: dict[PaymentState, payments_pb2.PaymentState.ValueType] = {
    PaymentState.CAPTURED: payments_pb2.PAYMENT_STATE_CAPTURED,
    PaymentState.DECLINED: payments_pb2.PAYMENT_STATE_DECLINED,
    PaymentState.REFUNDED: payments_pb2.PAYMENT_STATE_REFUNDED,
}


def payment_to_proto(payment: Payment) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        payment_id=payment.payment_id,
        order_id=payment.order_id,
        customer_id=payment.customer_id,
        amount=common_pb2.Money(
            currency_code=payment.amount.currency_code, amount_minor=payment.amount.amount_minor
        ),
        state=_STATES[payment.state],
        decline_reason=payment.decline_reason,
    )


def new_payment_id() -> str:
    return f"pay_{uuid.uuid4().hex}"


class PaymentsServicer(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(
        self,
        store: Store,
        settings: Callable[[], PaymentsSettings],
        rng: random.Random,
    ) -> None:
        self._store = store
        # A callable, not a value: failure knobs are re-read from the live config on each call.
        self._settings = settings
        self._rng = rng

    async def _delay(self, settings: PaymentsSettings) -> None:
        if settings.latency_ms > 0:
            await asyncio.sleep(settings.latency_ms / 1000)

    async def Charge(
        self, request: payments_pb2.ChargeRequest, context: Context
    ) -> payments_pb2.ChargeResponse:
        amount = (
            Money(request.amount.currency_code, request.amount.amount_minor)
            if request.HasField("amount")
            else None
        )
        command = domain.validate_charge(
            request.idempotency_key, request.order_id, request.customer_id, amount
        )
        settings = self._settings()
        await self._delay(settings)
        # Rolled on the event loop (the rng is not shared with the store thread); the storage
        # function ignores the roll when the key already has an outcome.
        outcome = domain.decide_outcome(
            self._rng.random(), settings.failure_rate, FailureCode(settings.failure_code)
        )
        payment_id = new_payment_id()
        payment = await self._store.run(
            lambda conn: storage.charge(conn, command, outcome, payment_id)
        )
        if payment.state is PaymentState.DECLINED:
            raise domain.declined_error(payment)
        return payments_pb2.ChargeResponse(payment=payment_to_proto(payment))

    async def Refund(
        self, request: payments_pb2.RefundRequest, context: Context
    ) -> payments_pb2.RefundResponse:
        command = domain.validate_refund(request.idempotency_key, request.payment_id)
        await self._delay(self._settings())
        payment = await self._store.run(lambda conn: storage.refund(conn, command))
        return payments_pb2.RefundResponse(payment=payment_to_proto(payment))

    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: Context
    ) -> payments_pb2.GetPaymentResponse:
        payment_id = domain.validate_payment_id(request.payment_id)
        payment = await self._store.run(lambda conn: storage.get_payment(conn, payment_id))
        if payment is None:
            raise NotFound(f"payment {payment_id!r} not found")
        return payments_pb2.GetPaymentResponse(payment=payment_to_proto(payment))
