"""Fixtures for the control-plane runtime: a fake clock, the reference resources as files, and
a publisher over an in-memory cache. No sockets here except the admin API tests' loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from grpcmesh_control.local.sources import ResourceSet, parse_resource_files, read_resource_files
from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.model import MethodCatalog

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "manifests" / "examples"


class FakeClock:
    """A clock tests move by hand. ``sleep`` blocks until ``advance`` passes its deadline;
    ``sleeping`` returns once something sleeps, so a test knows the code under test is
    waiting. With ``on_sleep`` set, every sleep calls it and then advances by itself (for
    loops a test drives without stepping each iteration)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._new_sleeper = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep(seconds)
            self.now += seconds
            await asyncio.sleep(0)  # still a suspension point, like a real sleep
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, waiter))
        self._new_sleeper.set()
        await waiter

    async def sleeping(self) -> None:
        """Return once some coroutine is blocked in ``sleep``."""
        while not any(not waiter.done() for _, waiter in self._sleepers):
            self._new_sleeper.clear()
            await self._new_sleeper.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [(t, w) for t, w in self._sleepers if t <= self.now + 1e-9]
        self._sleepers = [(t, w) for t, w in self._sleepers if t > self.now + 1e-9]
        for _, waiter in due:
            if not waiter.done():
                waiter.set_result(None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def catalog() -> MethodCatalog:
    return load_catalog()


@pytest.fixture(scope="session")
def example_files() -> dict[str, bytes]:
    return read_resource_files(EXAMPLES)


@pytest.fixture(scope="session")
def examples(example_files: dict[str, bytes], catalog: MethodCatalog) -> ResourceSet:
    return parse_resource_files(example_files, catalog=catalog)
