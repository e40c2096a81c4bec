"""``workers: 2``: two processes on one port behind one parent, as real processes.

The echo service runs as ``python tests/kit/echo_service.py`` with ``GRPCMESH_WORKERS=2``. Each
call here opens its own connection (a private subchannel pool), so the kernel's SO_REUSEPORT
choice of worker is made afresh; ``GetProduct("pid")`` answers with the worker's pid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from grpcmesh_kit.workers import WORKER_ENV, WorkerLink
from tests.kit.test_lifecycle import NOT_SERVING, SERVING, wait_for_file
from tests.scrape import scrape, value

ECHO = Path(__file__).with_name("echo_service.py")
PRIVATE = [("grpc.use_local_subchannel_pool", 1)]
"""A new connection per channel: no sharing of subchannels between channels."""
TRIES = 64
"""New connections tried before concluding a worker does not answer: the kernel picks a
worker per connection by a hash, so each has a 1 in 2 chance (both seen: 1 - 2**-63)."""


@dataclass
class Workers:
    parent: subprocess.Popen[bytes]
    address: str
    metrics: str
    config: Path

    def worker_pids(self) -> set[int]:
        return {p.pid for p in psutil.Process(self.parent.pid).children()}


@asynccontextmanager
async def workers(tmp_path: Path, **settings: str) -> AsyncIterator[Workers]:
    ports_file, config = tmp_path / "ports.json", tmp_path / "echo.yaml"
    env = {
        **os.environ,
        "GRPCMESH_WORKERS": "2",
        "GRPCMESH_PORT": "0",
        "GRPCMESH_METRICS_PORT": "0",
        "GRPCMESH_PORTS_FILE": str(ports_file),
        "GRPCMESH_CONFIG_FILE": str(config),
        "GRPCMESH_CONFIG_POLL_SECONDS": "0.2",
        "GRPCMESH_DRAIN_SECONDS": "0.5",
        "GRPCMESH_GRACE_SECONDS": "5",
        "GRPCMESH_LOG_FORMAT": "text",
        **{f"GRPCMESH_{name.upper()}": v for name, v in settings.items()},
    }
    parent = subprocess.Popen([sys.executable, str(ECHO)], env=env)
    try:
        ports = await wait_for_file(ports_file, parent)
        yield Workers(parent, f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['metrics']}", config)
    finally:
        children = [psutil.Process(p) for p in _children(parent.pid)]
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for child in children:
            child.kill()
        psutil.wait_procs(children, timeout=10)


def _children(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


async def health(address: str) -> int | None:
    """The overall health one new connection answers; None when nothing accepts it."""
    async with grpc.aio.insecure_channel(address, options=PRIVATE) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return None
    return int(response.status)


async def pid_of(address: str) -> int:
    """The pid of the worker that one new connection reached."""
    async with grpc.aio.insecure_channel(address, options=PRIVATE) as channel:
        response = await catalog_pb2_grpc.CatalogServiceStub(channel).GetProduct(
            catalog_pb2.GetProductRequest(product_id="pid"), timeout=5
        )
    return int(response.product.name)


async def answering(address: str, want: set[int]) -> set[int]:
    """The pids new connections reach, trying until all of ``want`` answered (bounded)."""
    seen: set[int] = set()
    for _ in range(TRIES):
        seen.add(await pid_of(address))
        if want <= seen:
            break
    return seen


async def until_serving(address: str, timeout: float = 30) -> list[int | None]:
    """Health on new connections every 50 ms until SERVING; every answer on the way."""
    answers: list[int | None] = []
    async with asyncio.timeout(timeout):
        while not answers or answers[-1] != SERVING:
            answers.append(await health(address))
            await asyncio.sleep(0.05)
    return answers


async def test_two_workers_serve_one_port_with_one_summed_metrics_page(tmp_path: Path) -> None:
    async with workers(tmp_path) as app:
        await until_serving(app.address)
        pids = app.worker_pids()
        assert len(pids) == 2 and app.parent.pid not in pids
        assert await answering(app.address, pids) == pids

        calls = 10
        for _ in range(calls):
            await pid_of(app.address)
        page = await scrape(app.metrics)
        # Every call that any worker handled is on the parent's one page, with the app's info.
        handled = value(page, "grpc_server_handled_total", grpc_method="GetProduct")
        assert handled >= calls + 2  # the 10, plus at least one per worker from answering()
        assert value(page, "grpcmesh_service_info", service="echo") == 1

        # A live config change reaches every worker: each counts its own reload.
        app.config.write_text(yaml.safe_dump({"delay_ms": 1}))
        async with asyncio.timeout(15):
            while value(await scrape(app.metrics), "grpcmesh_config_reloads_total") < 2:
                await asyncio.sleep(0.1)


async def test_serving_only_when_every_worker_is_up_and_sigterm_drains_them_all(
    tmp_path: Path,
) -> None:
    # Worker 1 takes 3 s to start: worker 0 is bound long before it.
    async with workers(tmp_path, slow_worker="1", slow_worker_startup_ms="3000") as app:
        answers = await until_serving(app.address)
        assert NOT_SERVING in answers, answers  # worker 0 answered, alone, and said so
        pids = app.worker_pids()
        # From the first SERVING on, whichever worker a connection reaches says SERVING.
        assert [await health(app.address) for _ in range(16)] == [SERVING] * 16
        assert await answering(app.address, pids) == pids

        # In-flight calls on both workers, each with a health watch on its own connection.
        app.config.write_text(yaml.safe_dump({"delay_ms": 1500}))
        async with asyncio.timeout(15):
            while value(await scrape(app.metrics), "grpcmesh_config_reloads_total") < 2:
                await asyncio.sleep(0.1)
        started = value(await scrape(app.metrics), "grpc_server_started_total")

        async def call_and_watch() -> tuple[int, list[int]]:
            async with grpc.aio.insecure_channel(app.address, options=PRIVATE) as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service="")
                )
                call = catalog_pb2_grpc.CatalogServiceStub(channel).GetProduct(
                    catalog_pb2.GetProductRequest(product_id="pid"), timeout=10
                )
                statuses = [int((await watch.read()).status)]
                response = await call  # finishes during the drain
                while statuses[-1] != NOT_SERVING:
                    statuses.append(int((await watch.read()).status))
                watch.cancel()
            return int(response.product.name), statuses

        connections = 16
        calls = asyncio.gather(*(call_and_watch() for _ in range(connections)))
        async with asyncio.timeout(10):  # every call is inside its handler
            while value(await scrape(app.metrics), "grpc_server_started_total") < started + 16:
                await asyncio.sleep(0.05)
        app.parent.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            results = await calls
        assert {pid for pid, _ in results} == pids  # calls on both workers completed
        assert all(statuses == [SERVING, NOT_SERVING] for _, statuses in results), results
        assert app.parent.wait(timeout=20) == 0
        assert not any(psutil.pid_exists(pid) for pid in pids)


async def test_a_killed_worker_is_replaced_and_an_orphaned_one_stops(tmp_path: Path) -> None:
    async with workers(tmp_path) as app:
        await until_serving(app.address)
        pids = app.worker_pids()
        assert await answering(app.address, pids) == pids
        before = value(await scrape(app.metrics), "grpc_server_handled_total")

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        async with asyncio.timeout(30):
            while len(now := app.worker_pids() - {victim}) < 2:
                await asyncio.sleep(0.1)
        assert (now & pids) == pids - {victim}
        # The replacement answers, and says SERVING, like its sibling.
        replacement = now - pids
        async with asyncio.timeout(30):
            while not (replacement <= await answering(app.address, now)):
                await asyncio.sleep(0.1)
        assert [await health(app.address) for _ in range(8)] == [SERVING] * 8
        # The dead worker's counts stay in the sum: a counter of the replica never goes down.
        assert value(await scrape(app.metrics), "grpc_server_handled_total") > before

        # A worker whose parent is gone stops by itself (nothing lingers on the port).
        app.parent.kill()
        app.parent.wait()
        _, alive = psutil.wait_procs([psutil.Process(p) for p in now], timeout=20)
        assert not alive
        assert await health(app.address) is None


async def test_a_worker_that_cannot_start_fails_the_app_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    # No sidecar answers at this admin address: every worker's start fails (SidecarNotReady).
    async with workers(
        tmp_path, sidecar_admin="127.0.0.1:9", sidecar_ready_timeout_seconds="0.5"
    ) as app:
        pids: set[int] = set()
        async with asyncio.timeout(30):
            while app.parent.poll() is None:
                pids |= app.worker_pids()
                await asyncio.sleep(0.05)
        assert app.parent.returncode != 0
        assert pids, "no worker was ever started"
        assert not any(psutil.pid_exists(pid) for pid in pids)
        assert await health(app.address) is None


def test_a_malformed_worker_link_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(WORKER_ENV, raising=False)
    assert WorkerLink.from_env() is None
    monkeypatch.setenv(WORKER_ENV, "1:2")
    with pytest.raises(ValueError, match=WORKER_ENV):
        WorkerLink.from_env()
