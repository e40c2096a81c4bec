"""Payments schema (migrations for the kit Store) and its transactions."""

from __future__ import annotations

import sqlite3

from grpcmesh_kit import NotFound, Unavailable
from grpcmesh_payments import domain
from grpcmesh_payments.domain import (
    ChargeCommand,
    Money,
    Outcome,
    Payment,
    PaymentState,
    RefundCommand,
)

MIGRATIONS: list[str] = [
    """
    CREATE TABLE payments (
        payment_id      TEXT PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        order_id        TEXT NOT NULL,
        customer_id     TEXT NOT NULL,
        currency_code   TEXT NOT NULL,
        amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
        state           TEXT NOT NULL CHECK (state IN ('CAPTURED', 'DECLINED', 'REFUNDED')),
        decline_reason  TEXT NOT NULL DEFAULT '',
        created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    ) WITHOUT ROWID;
    CREATE INDEX payments_by_order ON payments (order_id);
    CREATE TABLE refunds (
        idempotency_key TEXT PRIMARY KEY,
        payment_id      TEXT NOT NULL REFERENCES payments (payment_id),
        created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    ) WITHOUT ROWID
    """,
]

_COLUMNS = "payment_id, order_id, customer_id, currency_code, amount_minor, state, decline_reason"


def _payment(row: sqlite3.Row) -> Payment:
    return Payment(
        payment_id=row["payment_id"],
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        amount=Money(row["currency_code"], row["amount_minor"]),
        state=PaymentState(row["state"]),
        decline_reason=row["decline_reason"],
    )


def get_payment(conn: sqlite3.Connection, payment_id: str) -> Payment | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM payments WHERE payment_id = ?", (payment_id,)
    ).fetchone()
    return None if row is None else _payment(row)


def charge(
    conn: sqlite3.Connection, command: ChargeCommand, outcome: Outcome, new_payment_id: str
) -> Payment:
    """Records a new charge with ``outcome``, or returns the one already recorded for the key.

    The outcome is decided by the caller before the transaction but only applies to a new key,
    so a repeat can never flip a recorded decline into a capture or vice versa.
    """
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM payments WHERE idempotency_key = ?", (command.idempotency_key,)
    ).fetchone()
    if row is not None:
        return domain.replay_charge(_payment(row), command)
    if outcome is Outcome.UNAVAILABLE:
        raise Unavailable("payment provider unavailable (injected failure); retry")
    declined = outcome is Outcome.DECLINE
    payment = Payment(
        payment_id=new_payment_id,
        order_id=command.order_id,
        customer_id=command.customer_id,
        amount=command.amount,
        state=PaymentState.DECLINED if declined else PaymentState.CAPTURED,
        decline_reason=domain.INJECTED_DECLINE_REASON if declined else "",
    )
    conn.execute(
        "INSERT INTO payments (payment_id, idempotency_key, order_id, customer_id,"
        " currency_code, amount_minor, state, decline_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            payment.payment_id,
            command.idempotency_key,
            payment.order_id,
            payment.customer_id,
            payment.amount.currency_code,
            payment.amount.amount_minor,
            payment.state.value,
            payment.decline_reason,
        ),
    )
    return payment


def refund(conn: sqlite3.Connection, command: RefundCommand) -> Payment:
    recorded = conn.execute(
        "SELECT payment_id FROM refunds WHERE idempotency_key = ?", (command.idempotency_key,)
    ).fetchone()
    if recorded is not None:
        domain.check_refund_key(recorded["payment_id"], command)
    payment = get_payment(conn, command.payment_id)
    if payment is None:
        raise NotFound(f"payment {command.payment_id!r} not found")
    new_state = domain.refund_transition(payment)
    if payment.state is not new_state:
        conn.execute(
            "UPDATE payments SET state = ?,"
            " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE payment_id = ?",
            (new_state.value, payment.payment_id),
        )
        payment = Payment(
            payment.payment_id,
            payment.order_id,
            payment.customer_id,
            payment.amount,
            new_state,
            payment.decline_reason,
        )
    if recorded is None:
        conn.execute(
            "INSERT INTO refunds (idempotency_key, payment_id) VALUES (?, ?)",
            (command.idempotency_key, command.payment_id),
        )
    return payment
