"""SQLite storage for services: one connection on one thread, one transaction per call.

Every ``Store.run(fn)`` executes ``fn(connection)`` inside ``BEGIN IMMEDIATE`` on a dedicated
worker thread, so transactions of one process never interleave, and ``BEGIN IMMEDIATE`` plus a
busy timeout serialises writers across processes (replicas) sharing the file. The event loop is
never blocked. Each service owns its schema as an ordered list of migrations, tracked by
``PRAGMA user_version``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_random

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
"""How long a writer waits for another process's transaction before failing (ms)."""


class Store:
    """A SQLite database owned by one service."""

    def __init__(self, path: str | Path, migrations: Sequence[str]) -> None:
        self.path = str(path)
        self._migrations = tuple(migrations)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)

    def _open_sync(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._conn = conn
        self._migrate_sync(conn)

    def _migrate_sync(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for number, script in enumerate(self._migrations[version:], start=version + 1):
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction; commit if it returns, roll back if it raises."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._tx, fn, "BEGIN IMMEDIATE"
        )

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a read transaction: a consistent view that, in WAL mode, never blocks
        (or waits for) writers in other processes."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._tx, fn, "BEGIN DEFERRED"
        )

    def _tx(self, fn: Callable[[sqlite3.Connection], T], begin: str) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError("Store.open() was not awaited")
        conn.execute(begin)
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switching a new file to WAL needs an exclusive lock and ignores busy_timeout, so two
    replicas opening one new database at once would fail with "database is locked": retry."""
    for attempt in Retrying(
        retry=retry_if_exception_type(sqlite3.OperationalError),
        wait=wait_random(0.01, 0.1),
        stop=stop_after_delay(BUSY_TIMEOUT_MS / 1000),
        reraise=True,
    ):
        with attempt:
            conn.execute("PRAGMA journal_mode = WAL")


def _statements(script: str) -> list[str]:
    """Split a script into statements the way SQLite parses them (semicolons inside strings
    and trigger bodies do not end a statement)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return [s for s in statements if s.rstrip(";").strip()]
