"""Unit tests of payments' pure rules: validation, replay, refunds, failure injection."""

from __future__ import annotations

import pytest

from grpcmesh_kit import FailedPrecondition, InvalidArgument
from grpcmesh_payments import domain
from grpcmesh_payments.domain import (
    ChargeCommand,
    FailureCode,
    Money,
    Outcome,
    Payment,
    PaymentState,
    RefundCommand,
)

USD_10 = Money("USD", 1000)


def test_valid_charge() -> None:
    command = domain.validate_charge("k", "o", "c", USD_10)
    assert command == ChargeCommand("k", "o", "c", USD_10)


@pytest.mark.parametrize(
    ("key", "order_id", "customer_id", "amount", "field"),
    [
        ("", "o", "c", USD_10, "idempotency_key"),
        ("k" * 129, "o", "c", USD_10, "idempotency_key"),
        ("k", "", "c", USD_10, "order_id"),
        ("k", "o", "", USD_10, "customer_id"),
        ("k", "o", "c", None, "amount"),
        ("k", "o", "c", Money("usd", 1), "amount.currency_code"),
        ("k", "o", "c", Money("US", 1), "amount.currency_code"),
        ("k", "o", "c", Money("USDX", 1), "amount.currency_code"),
        ("k", "o", "c", Money("", 1), "amount.currency_code"),
        ("k", "o", "c", Money("USD", 0), "amount.amount_minor"),
        ("k", "o", "c", Money("USD", -5), "amount.amount_minor"),
    ],
)
def test_invalid_charge_names_the_field(
    key: str, order_id: str, customer_id: str, amount: Money | None, field: str
) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.validate_charge(key, order_id, customer_id, amount)
    assert exc.value.field == field


@pytest.mark.parametrize(
    ("key", "payment_id", "field"), [("", "p", "idempotency_key"), ("k", "", "payment_id")]
)
def test_invalid_refund_names_the_field(key: str, payment_id: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.validate_refund(key, payment_id)
    assert exc.value.field == field


@pytest.mark.parametrize(
    ("roll", "rate", "code", "expected"),
    [
        (0.0, 0.0, FailureCode.FAILED_PRECONDITION, Outcome.CAPTURE),
        (0.999999, 1.0, FailureCode.FAILED_PRECONDITION, Outcome.DECLINE),
        (0.0, 1.0, FailureCode.UNAVAILABLE, Outcome.UNAVAILABLE),
        (0.49, 0.5, FailureCode.FAILED_PRECONDITION, Outcome.DECLINE),
        (0.5, 0.5, FailureCode.UNAVAILABLE, Outcome.CAPTURE),
    ],
)
def test_decide_outcome(roll: float, rate: float, code: FailureCode, expected: Outcome) -> None:
    assert domain.decide_outcome(roll, rate, code) is expected


def payment(state: PaymentState) -> Payment:
    return Payment("pay_1", "o", "c", USD_10, state)


@pytest.mark.parametrize("state", list(PaymentState))
def test_replay_of_the_same_charge_returns_the_first_outcome(state: PaymentState) -> None:
    existing = payment(state)
    assert domain.replay_charge(existing, ChargeCommand("k", "o", "c", USD_10)) is existing


@pytest.mark.parametrize(
    "command",
    [
        ChargeCommand("k", "o2", "c", USD_10),
        ChargeCommand("k", "o", "c2", USD_10),
        ChargeCommand("k", "o", "c", Money("USD", 1001)),
        ChargeCommand("k", "o", "c", Money("EUR", 1000)),
    ],
)
def test_key_reuse_with_different_parameters_is_invalid(command: ChargeCommand) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.replay_charge(payment(PaymentState.CAPTURED), command)
    assert exc.value.field == "idempotency_key"


def test_refund_transitions() -> None:
    assert domain.refund_transition(payment(PaymentState.CAPTURED)) is PaymentState.REFUNDED
    assert domain.refund_transition(payment(PaymentState.REFUNDED)) is PaymentState.REFUNDED
    with pytest.raises(FailedPrecondition):
        domain.refund_transition(payment(PaymentState.DECLINED))


def test_refund_key_is_bound_to_one_payment() -> None:
    domain.check_refund_key("pay_1", RefundCommand("k", "pay_1"))
    with pytest.raises(InvalidArgument) as exc:
        domain.check_refund_key("pay_1", RefundCommand("k", "pay_2"))
    assert exc.value.field == "idempotency_key"


def test_declined_error_names_the_payment() -> None:
    error = domain.declined_error(Payment("pay_9", "o", "c", USD_10, PaymentState.DECLINED, "no"))
    assert "pay_9" in error.message
