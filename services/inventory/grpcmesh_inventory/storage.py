"""Inventory schema (migrations for the kit Store) and its transactions.

Each function runs inside one kit ``Store.run`` transaction (BEGIN IMMEDIATE), so a check and
the writes that depend on it cannot interleave with another request or replica; raising a kit
error rolls the whole transaction back, which is what makes ReserveStock all-or-nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from grpcmesh_inventory import domain
from grpcmesh_inventory.domain import (
    AdjustCommand,
    LineItem,
    Reservation,
    ReservationState,
    ReserveCommand,
    StockLevel,
)
from grpcmesh_kit import FailedPrecondition

MIGRATIONS: list[str] = [
    """
    CREATE TABLE stock (
        product_id TEXT PRIMARY KEY,
        available  INTEGER NOT NULL CHECK (available >= 0),
        reserved   INTEGER NOT NULL CHECK (reserved >= 0),
        committed  INTEGER NOT NULL CHECK (committed >= 0)
    ) WITHOUT ROWID;
    CREATE TABLE reservations (
        order_id   TEXT PRIMARY KEY,
        state      TEXT NOT NULL CHECK (state IN ('RESERVED', 'RELEASED', 'COMMITTED')),
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    ) WITHOUT ROWID;
    CREATE TABLE reservation_items (
        order_id   TEXT NOT NULL REFERENCES reservations (order_id),
        product_id TEXT NOT NULL,
        quantity   INTEGER NOT NULL CHECK (quantity > 0),
        PRIMARY KEY (order_id, product_id)
    ) WITHOUT ROWID
    """,
]


def seed_stock(conn: sqlite3.Connection, seed: Mapping[str, int]) -> int:
    """Creates stock rows for seeded products that have none; returns how many were created.

    INSERT OR IGNORE keeps this idempotent across restarts and between replicas sharing the
    database: whoever seeds first wins, later seeds never reset stock that has since moved.
    """
    created = 0
    for product_id, quantity in sorted(seed.items()):
        cursor = conn.execute(
            "INSERT OR IGNORE INTO stock (product_id, available, reserved, committed)"
            " VALUES (?, ?, 0, 0)",
            (product_id, quantity),
        )
        created += cursor.rowcount
    return created


def get_stock(conn: sqlite3.Connection, product_id: str) -> StockLevel | None:
    row = conn.execute(
        "SELECT product_id, available, reserved, committed FROM stock WHERE product_id = ?",
        (product_id,),
    ).fetchone()
    if row is None:
        return None
    return StockLevel(row["product_id"], row["available"], row["reserved"], row["committed"])


def get_reservation(conn: sqlite3.Connection, order_id: str) -> Reservation | None:
    row = conn.execute("SELECT state FROM reservations WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    items = conn.execute(
        "SELECT product_id, quantity FROM reservation_items WHERE order_id = ? ORDER BY product_id",
        (order_id,),
    ).fetchall()
    return Reservation(
        order_id=order_id,
        state=ReservationState(row["state"]),
        items=tuple(LineItem(r["product_id"], r["quantity"]) for r in items),
    )


def reserve(conn: sqlite3.Connection, command: ReserveCommand) -> ReservationState:
    existing = get_reservation(conn, command.order_id)
    if existing is not None:
        return domain.repeat_reserve(existing, command)
    for item in command.items:
        level = get_stock(conn, item.product_id)
        domain.check_availability(item, 0 if level is None else level.available)
    for item in command.items:
        # The guard repeats the check above so a logic slip can never oversell.
        cursor = conn.execute(
            "UPDATE stock SET available = available - ?, reserved = reserved + ?"
            " WHERE product_id = ? AND available >= ?",
            (item.quantity, item.quantity, item.product_id, item.quantity),
        )
        if cursor.rowcount != 1:
            raise FailedPrecondition(f"insufficient stock for {item.product_id!r}")
    conn.execute(
        "INSERT INTO reservations (order_id, state) VALUES (?, ?)",
        (command.order_id, ReservationState.RESERVED.value),
    )
    conn.executemany(
        "INSERT INTO reservation_items (order_id, product_id, quantity) VALUES (?, ?, ?)",
        [(command.order_id, i.product_id, i.quantity) for i in command.items],
    )
    return ReservationState.RESERVED


def _set_state(conn: sqlite3.Connection, order_id: str, state: ReservationState) -> None:
    conn.execute(
        "UPDATE reservations SET state = ?,"
        " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE order_id = ?",
        (state.value, order_id),
    )


def release(conn: sqlite3.Connection, order_id: str) -> ReservationState:
    existing = get_reservation(conn, order_id)
    new_state = domain.release_transition(None if existing is None else existing.state)
    if existing is None:
        # Tombstone: remembers the release so a late ReserveStock is refused.
        conn.execute(
            "INSERT INTO reservations (order_id, state) VALUES (?, ?)", (order_id, new_state.value)
        )
    elif existing.state is ReservationState.RESERVED:
        conn.executemany(
            "UPDATE stock SET available = available + ?, reserved = reserved - ?"
            " WHERE product_id = ?",
            [(i.quantity, i.quantity, i.product_id) for i in existing.items],
        )
        _set_state(conn, order_id, new_state)
    return new_state


def commit(conn: sqlite3.Connection, order_id: str) -> ReservationState:
    existing = get_reservation(conn, order_id)
    new_state = domain.commit_transition(None if existing is None else existing.state, order_id)
    if existing is not None and existing.state is ReservationState.RESERVED:
        conn.executemany(
            "UPDATE stock SET reserved = reserved - ?, committed = committed + ?"
            " WHERE product_id = ?",
            [(i.quantity, i.quantity, i.product_id) for i in existing.items],
        )
        _set_state(conn, order_id, new_state)
    return new_state


def adjust(conn: sqlite3.Connection, command: AdjustCommand) -> StockLevel:
    level = get_stock(conn, command.product_id)
    available = domain.adjusted_available(level, command)
    conn.execute(
        "INSERT INTO stock (product_id, available, reserved, committed) VALUES (?, ?, 0, 0)"
        " ON CONFLICT (product_id) DO UPDATE SET available = excluded.available",
        (command.product_id, available),
    )
    if level is None:
        return StockLevel(command.product_id, available, 0, 0)
    return StockLevel(command.product_id, available, level.reserved, level.committed)
