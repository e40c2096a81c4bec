"""The operator in a thread with its own event loop, as in its own process: kopf treats every
task of its loop as its own and cancels them on exit (the test's would be among them).

``running`` is for async tests whose API runs in the test's own loop (kmock): it waits without
blocking that loop. ``serving`` is for everything else (the real control plane), including
module-scoped fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

from grpcmesh_control.cluster.controller import Operator, RuntimeSettings
from tests.loopback import LOCALHOST, poll

__all__ = ["OperatorThread", "running", "serving"]

_START, _STOP = 30.0, 30.0


class OperatorThread:
    """``Operator(settings).run`` in a daemon thread; ``on_ready`` runs in that thread once
    the ADS server listens, before kopf starts."""

    def __init__(
        self, settings: RuntimeSettings, on_ready: Callable[[Operator], None] | None = None
    ) -> None:
        self.operator = Operator(settings)
        self._on_ready = on_ready
        self._stop, self.ready = threading.Event(), threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="operator", daemon=True)

    def _started(self, op: Operator) -> None:
        if self._on_ready is not None:
            self._on_ready(op)
        self.ready.set()

    def _serve(self) -> None:
        try:
            asyncio.run(self.operator.run(stop_flag=self._stop, on_ready=self._started))
        except BaseException as exc:
            self.failure = exc
            self.ready.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


@contextlib.asynccontextmanager
async def running(
    settings: RuntimeSettings, on_ready: Callable[[Operator], None] | None = None
) -> AsyncIterator[Operator]:
    """The operator while the block runs, waited for without blocking the caller's loop."""
    thread = OperatorThread(settings, on_ready)
    thread.start()
    try:
        await poll(lambda: _now(thread.ready.is_set()), "the operator to start", _START)
        thread.raise_failure()
        yield thread.operator
    finally:
        thread.stop()
        await poll(lambda: _now(not thread.alive), "the operator to stop", _STOP)
        thread.raise_failure()


@contextlib.contextmanager
def serving(
    settings: RuntimeSettings, on_ready: Callable[[Operator], None] | None = None
) -> Iterator[Operator]:
    """The operator while the block runs (blocking waits: its API is elsewhere)."""
    thread = OperatorThread(settings, on_ready)
    thread.start()
    try:
        assert thread.ready.wait(_START), "the operator did not start"
        thread.raise_failure()
        _wait_for_webhook_server(settings)
        yield thread.operator
    finally:
        thread.stop()
        thread.join(_STOP)
        assert not thread.alive, "the operator did not stop"
        thread.raise_failure()


def _wait_for_webhook_server(settings: RuntimeSettings) -> None:
    """kopf starts its webhook server after the operator's own servers (``ready``): wait, as
    the pod's readiness probe does, until the API server's admission calls can connect."""
    if settings.webhook_port is None:
        return
    deadline = time.monotonic() + _START
    while True:
        try:
            socket.create_connection((LOCALHOST, settings.webhook_port), timeout=1.0).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the webhook server did not listen"
            time.sleep(0.05)


async def _now(value: bool) -> bool:
    return value
