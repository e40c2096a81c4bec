"""The kit's SQLite store: migrations parsed like SQLite does, atomic transactions, and a
failed start that leaves nothing running."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from grpcmesh_kit import Store
from tests.kit.conftest import echo_settings
from tests.kit.echo_service import build_app

MIGRATIONS = [
    """
    CREATE TABLE item (id TEXT PRIMARY KEY, note TEXT NOT NULL DEFAULT 'a;b');
    CREATE TABLE audit (id TEXT);
    CREATE TRIGGER item_audit AFTER INSERT ON item BEGIN
        INSERT INTO audit (id) VALUES (new.id);
    END;
    """,
    "ALTER TABLE item ADD COLUMN qty INTEGER NOT NULL DEFAULT 0;",
]


async def test_migrations_run_once_and_respect_sqlite_syntax(tmp_path: Path) -> None:
    path = tmp_path / "db" / "x.db"
    store = Store(path, MIGRATIONS)
    await store.open()
    await store.run(lambda c: c.execute("INSERT INTO item (id, qty) VALUES ('i1', 2)"))
    await store.close()

    again = Store(path, MIGRATIONS)  # reopening must not re-run migrations
    await again.open()
    rows = await again.read(lambda c: c.execute("SELECT id, note, qty FROM item").fetchall())
    audit = await again.read(lambda c: c.execute("SELECT id FROM audit").fetchall())
    version = await again.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
    await again.close()
    assert [tuple(r) for r in rows] == [("i1", "a;b", 2)]
    assert [tuple(r) for r in audit] == [("i1",)]
    assert version == 2


async def test_a_failing_transaction_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db", MIGRATIONS)
    await store.open()

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO item (id) VALUES ('i1')")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await store.run(half_then_fail)
    count = await store.read(lambda c: c.execute("SELECT COUNT(*) FROM item").fetchone()[0])
    await store.close()
    assert count == 0


async def test_failed_start_hook_stops_everything(tmp_path: Path) -> None:
    app, _ = build_app(echo_settings())
    stopped: list[str] = []

    async def broken() -> None:
        raise RuntimeError("cannot open store")

    async def record_stop() -> None:
        stopped.append("stop hook ran")

    app.on_start(broken)
    app.on_stop(record_stop)
    with pytest.raises(RuntimeError, match="cannot open store"):
        await app.start()
    assert stopped == ["stop hook ran"]
    for port in (app.port, app.metrics_port):
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


async def test_replicas_can_open_one_new_database_at_once(tmp_path: Path) -> None:
    """Like replicas of a service starting together on a shared file."""
    import asyncio

    stores = [Store(tmp_path / "shared.db", MIGRATIONS) for _ in range(6)]
    await asyncio.gather(*(store.open() for store in stores))

    def insert(item_id: str) -> Callable[[sqlite3.Connection], object]:
        return lambda conn: conn.execute("INSERT INTO item (id) VALUES (?)", (item_id,))

    await asyncio.gather(*(store.run(insert(f"i{i}")) for i, store in enumerate(stores)))
    count = await stores[0].read(lambda c: c.execute("SELECT COUNT(*) FROM item").fetchone()[0])
    for store in stores:
        await store.close()
    assert count == 6
