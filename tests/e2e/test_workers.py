"""The mesh with ``workers: 2`` on every reference service: two processes behind each replica's
one port, one sidecar, one /metrics.

The whole suite runs this way with ``GRPCMESH_E2E_WORKERS=2`` (every mesh the tests start gets
``spec.workload.workers: 2``). This module is the subset CI runs on every change, on a mesh of
its own: orders through the ingress and every sidecar (the saga across four services, each in
two workers), a fault set by live config on one replica (it must reach both workers before
the retries are counted), every metrics page through promtool (the parent's page sums the
workers' values), and the processes themselves: two workers per replica, both taking the
sidecar's connections. Stopping the mesh (the fixture) drains every worker and leaves nothing.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import psutil
import pytest

from tests.e2e.harness import Mesh
from tests.e2e.test_mesh import (
    charges,
    test_every_metrics_page_passes_promtool,
    test_idempotent_charge_is_retried_on_the_healthy_replica,
    test_orders_placed_through_the_ingress_traverse_the_sidecars,
)

pytestmark = pytest.mark.slow

WORKERS = 2

__all__ = [
    "test_every_metrics_page_passes_promtool",
    "test_idempotent_charge_is_retried_on_the_healthy_replica",
    "test_orders_placed_through_the_ingress_traverse_the_sidecars",
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("e2e-workers") / "run", workers=WORKERS)
    mesh.start()
    try:
        yield mesh
    finally:
        assert mesh.stop() == 128 + signal.SIGTERM, mesh.log.read_text()[-3000:]


def _workers_of(pid: int | None) -> list[psutil.Process]:
    assert pid is not None
    return psutil.Process(pid).children()


def _sidecar_connections(worker: psutil.Process, app_port: int) -> int:
    """Established connections the worker accepted on the app port (only its sidecar dials it)."""
    return sum(
        1
        for c in worker.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == app_port
    )


async def test_every_replica_runs_its_workers_and_its_sidecar_reaches_both(mesh: Mesh) -> None:
    for replica in mesh.state.replicas:
        workers = _workers_of(replica.app_pid)
        assert len(workers) == WORKERS, (replica.service, replica.replica, workers)
        # The parent serves no gRPC: the workers hold the port.
        assert all(w.cmdline() == psutil.Process(replica.app_pid).cmdline() for w in workers)

    # 96 calls in flight through the ingress: ~43 at each payments v1 replica's sidecar, which
    # puts at most WORKER_STREAMS_PER_CONNECTION (4) on a connection to its app, so ~11
    # connections, each a fresh draw of a worker by the kernel: both get some, but for a
    # chance of 2 in 2**11.
    assert await charges(mesh.state.ingress, 600, concurrency=96) == {"OK": 600}
    replica = mesh.replica("payments/v1-0")
    port = int(replica.app.rpartition(":")[2])
    counts = await asyncio.to_thread(
        lambda: [_sidecar_connections(w, port) for w in _workers_of(replica.app_pid)]
    )
    assert all(n > 0 for n in counts), counts
