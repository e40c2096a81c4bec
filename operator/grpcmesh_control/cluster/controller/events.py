"""Kubernetes Events, posted off the reconcile path: ``post`` queues (never blocks a handler),
``run`` posts them in order. A full queue drops, counts and logs once per hundred (1000 services
can overflow it at once while the API is slow); an Event the API refuses is logged, not lost
silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from grpcmesh_control.cluster.controller.client import ApiError, KubeClient
from grpcmesh_control.cluster.controller.metrics import OperatorMetrics

__all__ = ["EventPoster"]

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
_LOG_EVERY = 100

Event = tuple[dict[str, Any], str, str, str]


class EventPoster:
    def __init__(self, metrics: OperatorMetrics, queue_size: int = QUEUE_SIZE) -> None:
        self._metrics = metrics
        self._queue_size = queue_size
        self._queue: asyncio.Queue[Event] | None = None
        self.dropped = 0
        self.refused = 0

    def open(self) -> None:
        """Start queueing (in the running loop); before this, ``post`` does nothing."""
        self._queue = asyncio.Queue(self._queue_size)

    @property
    def pending(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    def post(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue an Event about ``body``; dropped (counted, logged sparingly) if the queue is
        full."""
        if self._queue is None:
            return
        try:
            self._queue.put_nowait((dict(body), type_, reason, message))
        except asyncio.QueueFull:
            if self.dropped % _LOG_EVERY == 0:
                log.warning(
                    "event queue full: %d Events dropped so far (now: %s %s)",
                    self.dropped + 1,
                    reason,
                    message,
                )
            self.dropped += 1
            self._metrics.events_dropped.inc()

    async def run(self, client: KubeClient) -> None:
        assert self._queue is not None, "open() first"
        while True:
            body, type_, reason, message = await self._queue.get()
            try:
                await client.create_event(body, type_, reason, message, datetime.now(UTC))
            except ApiError as exc:
                if self.refused % _LOG_EVERY == 0:
                    meta = body.get("metadata") or {}
                    log.warning(
                        "Event %s on %s/%s not posted (%d so far): %s",
                        reason,
                        meta.get("namespace"),
                        meta.get("name"),
                        self.refused + 1,
                        exc,
                    )
                self.refused += 1
