"""Payments rules: validation, idempotent replay, refunds and failure injection. Pure: no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from grpcmesh_kit import FailedPrecondition, InvalidArgument
from grpcmesh_shop import require_id, validate_currency

# Largest amount SQLite (and a proto int64) can hold.
MAX_AMOUNT_MINOR = 2**63 - 1

INJECTED_DECLINE_REASON = "card_declined (injected failure)"


class PaymentState(enum.Enum):
    CAPTURED = "CAPTURED"
    DECLINED = "DECLINED"
    REFUNDED = "REFUNDED"


class Outcome(enum.Enum):
    """What the (simulated) payment provider does with a new charge."""

    CAPTURE = "CAPTURE"
    DECLINE = "DECLINE"  # recorded: a repeat returns the same decline
    UNAVAILABLE = "UNAVAILABLE"  # transient: nothing recorded, a retry may succeed


class FailureCode(enum.Enum):
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class Money:
    currency_code: str
    amount_minor: int


@dataclass(frozen=True)
class ChargeCommand:
    idempotency_key: str
    order_id: str
    customer_id: str
    amount: Money


@dataclass(frozen=True)
class RefundCommand:
    idempotency_key: str
    payment_id: str


@dataclass(frozen=True)
class Payment:
    payment_id: str
    order_id: str
    customer_id: str
    amount: Money
    state: PaymentState
    decline_reason: str = ""


def validate_money(currency_code: str, amount_minor: int, field: str = "amount") -> Money:
    validate_currency(currency_code, f"{field}.currency_code")
    if not 0 < amount_minor <= MAX_AMOUNT_MINOR:
        raise InvalidArgument(f"{field}.amount_minor", "must be positive")
    return Money(currency_code, amount_minor)


def validate_charge(
    idempotency_key: str,
    order_id: str,
    customer_id: str,
    amount: Money | None,
) -> ChargeCommand:
    """``amount`` is None when the request has no amount message at all."""
    require_id(idempotency_key, "idempotency_key")
    require_id(order_id, "order_id")
    require_id(customer_id, "customer_id")
    if amount is None:
        raise InvalidArgument("amount", "is required")
    checked = validate_money(amount.currency_code, amount.amount_minor)
    return ChargeCommand(idempotency_key, order_id, customer_id, checked)


def validate_refund(idempotency_key: str, payment_id: str) -> RefundCommand:
    return RefundCommand(
        require_id(idempotency_key, "idempotency_key"), require_id(payment_id, "payment_id")
    )


def validate_payment_id(payment_id: str) -> str:
    return require_id(payment_id, "payment_id")


def decide_outcome(roll: float, failure_rate: float, failure_code: FailureCode) -> Outcome:
    """``roll`` is uniform in [0, 1); a rate of 0 never fails and a rate of 1 always does."""
    if roll >= failure_rate:
        return Outcome.CAPTURE
    if failure_code is FailureCode.UNAVAILABLE:
        return Outcome.UNAVAILABLE
    return Outcome.DECLINE


def replay_charge(existing: Payment, command: ChargeCommand) -> Payment:
    """A charge whose key was seen before returns the first outcome, if it is the same charge."""
    same = (
        existing.order_id == command.order_id
        and existing.customer_id == command.customer_id
        and existing.amount == command.amount
    )
    if not same:
        raise InvalidArgument(
            "idempotency_key", "was already used for a charge with different parameters"
        )
    return existing


def check_refund_key(recorded_payment_id: str, command: RefundCommand) -> None:
    if recorded_payment_id != command.payment_id:
        raise InvalidArgument("idempotency_key", "was already used to refund another payment")


def refund_transition(payment: Payment) -> PaymentState:
    """CAPTURED becomes REFUNDED, REFUNDED stays; a declined payment moved no money to return."""
    if payment.state is PaymentState.DECLINED:
        raise FailedPrecondition(f"payment {payment.payment_id} was declined; nothing to refund")
    return PaymentState.REFUNDED


def declined_error(payment: Payment) -> FailedPrecondition:
    # The payment id leads the message because the kit's error mapping carries no structured
    # details for FAILED_PRECONDITION; callers can still find the declined payment.
    return FailedPrecondition(f"payment {payment.payment_id} declined: {payment.decline_reason}")
