"""Orders schema (migrations for the kit Store) and its transactions.

``order_events`` is the source of truth: append-only, one row per event, UNIQUE(order_id,
sequence). ``orders`` is the projection, rewritten from the log inside the same transaction as
every append, so a reader never sees the projection disagree with the log. An append names the
sequence it expects to follow; a concurrent appender (another replica resuming the same order)
makes it fail with :class:`ConcurrentAppend`, and the loser re-reads the log and decides again.

``saga_leases`` says which process drives a PENDING order's saga, and until when: a lease is
claimed (or renewed) in one ``BEGIN IMMEDIATE`` transaction, so of several replicas sharing the
database exactly one holds it; an append by a process that no longer holds the lease fails
(:class:`LeaseLost`), so a replica that stalled past its lease cannot write over the new owner.
A lease that expires (its owner died or hung) is free for any replica's recovery loop.
Functions taking a connection run inside one ``Store.run`` transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from grpcmesh_kit.errors import AlreadyExists
from grpcmesh_kit.store import Store
from grpcmesh_orders.events import (
    Event,
    EventData,
    EventType,
    LineItem,
    Money,
    OrderState,
    OrderView,
    Placed,
    PricedLine,
    decode_payload,
    project,
)
from grpcmesh_orders.validation import ListQuery, PlaceOrderCommand

MIGRATIONS: list[str] = [
    """
    CREATE TABLE order_events (
        order_id TEXT    NOT NULL,
        sequence INTEGER NOT NULL CHECK (sequence >= 1),
        type     TEXT    NOT NULL,
        time     TEXT    NOT NULL,
        detail   TEXT    NOT NULL,
        payload  TEXT    NOT NULL CHECK (json_valid(payload)),
        UNIQUE (order_id, sequence)
    );
    CREATE TABLE idempotency_keys (
        idempotency_key TEXT PRIMARY KEY,
        order_id        TEXT NOT NULL UNIQUE,
        fingerprint     TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE orders (
        position       INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id       TEXT    NOT NULL UNIQUE,
        customer_id    TEXT    NOT NULL,
        currency_code  TEXT    NOT NULL,
        state          TEXT    NOT NULL CHECK (state IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
        items          TEXT    NOT NULL CHECK (json_valid(items)),
        lines          TEXT    NOT NULL CHECK (json_valid(lines)),
        total_minor    INTEGER,
        failure_reason TEXT    NOT NULL,
        payment_id     TEXT    NOT NULL,
        created_at     TEXT    NOT NULL,
        updated_at     TEXT    NOT NULL,
        last_sequence  INTEGER NOT NULL
    );
    CREATE INDEX orders_by_customer ON orders (customer_id, position);
    CREATE INDEX orders_pending ON orders (state) WHERE state = 'PENDING'
    """,
    """
    CREATE TABLE saga_leases (
        order_id   TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID
    """,
]


class ConcurrentAppend(Exception):
    """Someone else appended to the order's log since the caller read it."""


class LeaseLost(ConcurrentAppend):
    """Another process holds the order's saga lease: the caller must stop driving it."""


@dataclass(frozen=True)
class Lease:
    """Who claims an order's saga (``owner``, unique per process) and for how long."""

    owner: str
    seconds: float


def claim(conn: sqlite3.Connection, order_id: str, lease: Lease, now: float) -> bool:
    """Takes or renews ``order_id``'s lease for ``lease.owner`` unless another owner holds an
    unexpired one; True if the caller holds it afterwards."""
    cursor = conn.execute(
        "INSERT INTO saga_leases (order_id, owner, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (order_id) DO UPDATE SET owner = excluded.owner,"
        " expires_at = excluded.expires_at"
        " WHERE saga_leases.owner = excluded.owner OR saga_leases.expires_at <= ?",
        (order_id, lease.owner, now + lease.seconds, now),
    )
    return cursor.rowcount == 1


def release_leases(conn: sqlite3.Connection, owner: str, order_ids: Sequence[str] = ()) -> None:
    """Gives up ``owner``'s leases on ``order_ids`` (all of them if empty)."""
    if order_ids:
        conn.executemany(
            "DELETE FROM saga_leases WHERE order_id = ? AND owner = ?",
            [(order_id, owner) for order_id in order_ids],
        )
    else:
        conn.execute("DELETE FROM saga_leases WHERE owner = ?", (owner,))


def claimable_orders(conn: sqlite3.Connection, owner: str, now: float, limit: int) -> list[str]:
    """PENDING orders nobody else drives: no lease, an expired one, or one of ``owner``'s."""
    rows = conn.execute(
        "SELECT o.order_id FROM orders o LEFT JOIN saga_leases l ON l.order_id = o.order_id"
        " WHERE o.state = 'PENDING' AND (l.order_id IS NULL OR l.expires_at <= ? OR l.owner = ?)"
        " ORDER BY o.position LIMIT ?",
        (now, owner, limit),
    ).fetchall()
    return [row["order_id"] for row in rows]


@dataclass(frozen=True)
class Placement:
    order_id: str
    created: bool


@dataclass(frozen=True)
class ListedOrder:
    position: int
    view: OrderView


def _time_text(time: datetime) -> str:
    return time.astimezone(UTC).isoformat(timespec="microseconds")


def _time_value(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _event_from_row(row: sqlite3.Row) -> Event:
    data = decode_payload(EventType(row["type"]), json.loads(row["payload"]))
    return Event(row["order_id"], row["sequence"], _time_value(row["time"]), data, row["detail"])


def load_events(conn: sqlite3.Connection, order_id: str, after: int = 0) -> list[Event]:
    rows = conn.execute(
        "SELECT order_id, sequence, type, time, detail, payload FROM order_events"
        " WHERE order_id = ? AND sequence > ? ORDER BY sequence",
        (order_id, after),
    ).fetchall()
    return [_event_from_row(row) for row in rows]


def append(
    conn: sqlite3.Connection,
    order_id: str,
    expected_sequence: int,
    new: Sequence[EventData],
    now: datetime,
    lease: Lease | None = None,
) -> list[Event]:
    """Appends ``new`` after event ``expected_sequence`` and refreshes the projection.

    Returns the order's whole log. Raises ConcurrentAppend if the log has moved on, LeaseLost
    if ``lease`` is given and another owner holds the order's lease (else it is renewed; a
    terminal event releases it).
    """
    if lease is not None and not claim(conn, order_id, lease, now.timestamp()):
        raise LeaseLost(f"order {order_id}: the saga lease is held by another process")
    (current,) = conn.execute(
        "SELECT COALESCE(MAX(sequence), 0) FROM order_events WHERE order_id = ?", (order_id,)
    ).fetchone()
    if current != expected_sequence:
        raise ConcurrentAppend(f"order {order_id}: log is at {current}, not {expected_sequence}")
    rows = [
        (
            order_id,
            expected_sequence + offset,
            data.TYPE.value,
            _time_text(now),
            data.detail,
            json.dumps(data.to_json(), separators=(",", ":")),
        )
        for offset, data in enumerate(new, start=1)
    ]
    try:
        conn.executemany(
            "INSERT INTO order_events (order_id, sequence, type, time, detail, payload)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    except sqlite3.IntegrityError as exc:
        # The UNIQUE constraint backs up the check above should another process race past it.
        raise ConcurrentAppend(f"order {order_id}: {exc}") from exc
    events = load_events(conn, order_id)
    view = project(events)
    _write_projection(conn, view)
    if view.state.terminal:
        conn.execute("DELETE FROM saga_leases WHERE order_id = ?", (order_id,))
    return events


def _write_projection(conn: sqlite3.Connection, view: OrderView) -> None:
    conn.execute(
        "INSERT INTO orders (order_id, customer_id, currency_code, state, items, lines,"
        " total_minor, failure_reason, payment_id, created_at, updated_at, last_sequence)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (order_id) DO UPDATE SET state = excluded.state, lines = excluded.lines,"
        " total_minor = excluded.total_minor, failure_reason = excluded.failure_reason,"
        " payment_id = excluded.payment_id, updated_at = excluded.updated_at,"
        " last_sequence = excluded.last_sequence",
        (
            view.order_id,
            view.customer_id,
            view.currency_code,
            view.state.value,
            json.dumps([i.to_json() for i in view.items]),
            json.dumps([line.to_json() for line in view.lines]),
            None if view.total is None else view.total.amount_minor,
            view.failure_reason,
            view.payment_id,
            _time_text(view.created_at),
            _time_text(view.updated_at),
            view.last_sequence,
        ),
    )


def _view_from_row(row: sqlite3.Row) -> OrderView:
    currency = row["currency_code"]
    return OrderView(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        currency_code=currency,
        items=tuple(LineItem.from_json(i) for i in json.loads(row["items"])),
        lines=tuple(PricedLine.from_json(line) for line in json.loads(row["lines"])),
        total=None if row["total_minor"] is None else Money(currency, row["total_minor"]),
        state=OrderState(row["state"]),
        failure_reason=row["failure_reason"],
        payment_id=row["payment_id"],
        created_at=_time_value(row["created_at"]),
        updated_at=_time_value(row["updated_at"]),
        last_sequence=row["last_sequence"],
    )


def place(
    conn: sqlite3.Connection,
    command: PlaceOrderCommand,
    new_order_id: str,
    now: datetime,
    lease: Lease | None = None,
) -> Placement:
    """The order for ``command.idempotency_key``: the existing one, or a new PLACED order.

    The key lookup and the insert share one transaction, so concurrent requests with one key
    (in this process or another) create exactly one order. A new order is leased to ``lease``
    in the same transaction, so no other replica's recovery loop takes it up meanwhile.
    """
    row = conn.execute(
        "SELECT order_id, fingerprint FROM idempotency_keys WHERE idempotency_key = ?",
        (command.idempotency_key,),
    ).fetchone()
    if row is not None:
        if row["fingerprint"] != command.fingerprint:
            # Also keeps one customer's key from revealing another customer's order.
            raise AlreadyExists("idempotency_key: already used for a different order request")
        return Placement(row["order_id"], created=False)
    conn.execute(
        "INSERT INTO idempotency_keys (idempotency_key, order_id, fingerprint) VALUES (?, ?, ?)",
        (command.idempotency_key, new_order_id, command.fingerprint),
    )
    placed = Placed(command.customer_id, command.currency_code, command.items)
    append(conn, new_order_id, 0, [placed], now, lease)
    return Placement(new_order_id, created=True)


def get_order(conn: sqlite3.Connection, order_id: str) -> OrderView | None:
    row = conn.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    return None if row is None else _view_from_row(row)


def list_orders(conn: sqlite3.Connection, query: ListQuery) -> list[ListedOrder]:
    """Up to ``query.limit + 1`` orders, newest first; the extra one signals a next page."""
    clauses: list[str] = []
    params: list[str | int] = []
    if query.customer_id:
        clauses.append("customer_id = ?")
        params.append(query.customer_id)
    if query.before is not None:
        clauses.append("position < ?")
        params.append(query.before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT * FROM orders {where} ORDER BY position DESC LIMIT ?",
        (*params, query.limit + 1),
    ).fetchall()
    return [ListedOrder(row["position"], _view_from_row(row)) for row in rows]


def pending_order_ids(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT order_id FROM orders WHERE state = 'PENDING' ORDER BY position"
    ).fetchall()
    return [row["order_id"] for row in rows]


def watch_batch(
    conn: sqlite3.Connection, order_id: str, after: int
) -> tuple[OrderState | None, list[Event]]:
    """The order's state (None if unknown) and its events after ``after``, read together."""
    row = conn.execute("SELECT state FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None, []
    return OrderState(row["state"]), load_events(conn, order_id, after)


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class OrderRepository:
    """The async face of this module: each method is one Store transaction."""

    def __init__(self, store: Store, clock: Clock = utc_now) -> None:
        self.store = store
        self._clock = clock

    async def place(
        self, command: PlaceOrderCommand, new_order_id: str, lease: Lease | None = None
    ) -> Placement:
        now = self._clock()
        return await self.store.run(lambda conn: place(conn, command, new_order_id, now, lease))

    async def append(
        self,
        order_id: str,
        expected_sequence: int,
        new: Sequence[EventData],
        lease: Lease | None = None,
    ) -> list[Event]:
        now = self._clock()
        return await self.store.run(
            lambda conn: append(conn, order_id, expected_sequence, new, now, lease)
        )

    async def claim(self, order_id: str, lease: Lease) -> bool:
        now = self._clock().timestamp()
        return await self.store.run(lambda conn: claim(conn, order_id, lease, now))

    async def release_leases(self, owner: str, order_ids: Sequence[str] = ()) -> None:
        await self.store.run(lambda conn: release_leases(conn, owner, order_ids))

    async def claimable(self, owner: str, limit: int) -> list[str]:
        now = self._clock().timestamp()
        return await self.store.read(lambda conn: claimable_orders(conn, owner, now, limit))

    async def events(self, order_id: str, after: int = 0) -> list[Event]:
        return await self.store.run(lambda conn: load_events(conn, order_id, after))

    async def get(self, order_id: str) -> OrderView | None:
        return await self.store.run(lambda conn: get_order(conn, order_id))

    async def page(self, query: ListQuery) -> list[ListedOrder]:
        return await self.store.run(lambda conn: list_orders(conn, query))

    async def pending(self) -> list[str]:
        return await self.store.run(pending_order_ids)

    async def watch_batch(self, order_id: str, after: int) -> tuple[OrderState | None, list[Event]]:
        return await self.store.run(lambda conn: watch_batch(conn, order_id, after))
