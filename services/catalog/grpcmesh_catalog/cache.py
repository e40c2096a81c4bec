"""A small in-process TTL cache with an injectable clock (so tests control expiry)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Clock = Callable[[], float]


class TtlCache(Generic[K, V]):
    """Maps keys to values that expire ``ttl`` seconds after they were stored.

    The TTL is passed per ``put`` rather than fixed at construction because the service reads
    it from live settings, which can change while the process runs. Bounded: the least recently
    stored entry is evicted first. Used only from the event loop thread, so no locking.
    """

    def __init__(self, max_entries: int = 1024, clock: Clock = time.monotonic) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0:
            # A TTL of zero switches caching off.
            self._entries.pop(key, None)
            return
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
