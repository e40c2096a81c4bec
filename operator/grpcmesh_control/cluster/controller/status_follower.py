"""The status follower: MeshServices whose observed state changed (an EndpointSlice, a rollout,
a sidecar's connect/ACK/NACK) are marked from any thread with ``mark``; ``run`` reconciles the
marked ones after a debounce, so a burst costs one reconcile per service. Only the active
replica reconciles (a paused peer's marks are dropped: the active one follows its own)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Key", "StatusFollower"]

log = logging.getLogger(__name__)

Key = tuple[str, str]


class StatusFollower:
    def __init__(self, debounce_s: float) -> None:
        self._debounce_s = debounce_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flag: asyncio.Event | None = None
        self._stale: set[Key] = set()

    def open(self) -> None:
        """Start accepting marks (in the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._flag = asyncio.Event()

    def close(self) -> None:
        self._loop = self._flag = None

    def mark(self, key: Key | None) -> None:
        """Safe from any thread; a no-op before ``open`` or after the loop closed."""
        loop = self._loop
        if key is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to refresh
            loop.call_soon_threadsafe(self._add, key)

    def _add(self, key: Key) -> None:
        self._stale.add(key)
        if self._flag is not None:
            self._flag.set()

    async def run(
        self,
        active: Callable[[], Awaitable[bool]],
        reconcile: Callable[[Key], Awaitable[object]],
    ) -> None:
        assert self._flag is not None, "open() first"
        flag = self._flag
        while True:
            await flag.wait()
            await asyncio.sleep(self._debounce_s)  # coalesce the burst
            flag.clear()
            keys, self._stale = sorted(self._stale), set()
            if not await active():
                continue
            for key in keys:
                try:
                    await reconcile(key)
                except Exception:
                    log.exception("status refresh of %s/%s failed", *key)
