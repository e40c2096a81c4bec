"""Health is real: NOT_SERVING while starting, SERVING when ready, NOT_SERVING on SIGTERM,
and calls in flight when SIGTERM arrives still complete during the drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from tests.scrape import scrape, value

ECHO = Path(__file__).with_name("echo_service.py")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_for_file(
    path: Path, proc: subprocess.Popen[bytes], timeout: float = 15
) -> dict[str, int]:
    async with asyncio.timeout(timeout):
        while not path.exists() or not path.read_text():
            assert proc.poll() is None, "service exited before binding"
            await asyncio.sleep(0.02)
    ports: dict[str, int] = json.loads(path.read_text())
    return ports


async def test_health_transitions_and_drain_on_sigterm(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    env = {
        **os.environ,
        "GRPCMESH_PORT": "0",
        "GRPCMESH_METRICS_PORT": "0",
        "GRPCMESH_PORTS_FILE": str(ports_file),
        "GRPCMESH_STARTUP_DELAY_MS": "1000",
        "GRPCMESH_DRAIN_SECONDS": "0.5",
        "GRPCMESH_GRACE_SECONDS": "5",
        "GRPCMESH_DELAY_MS": "1500",
    }
    proc = subprocess.Popen([sys.executable, str(ECHO)], env=env, stderr=subprocess.PIPE)
    try:
        ports = await wait_for_file(ports_file, proc)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            seen: list[int] = []
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))

            async def next_status() -> int:
                async with asyncio.timeout(10):
                    response = await watch.read()
                assert response is not grpc.aio.EOF
                seen.append(response.status)
                return int(response.status)

            # Bound but still warming up: NOT_SERVING, then SERVING once the start hook is done.
            assert await next_status() == NOT_SERVING
            assert await next_status() == SERVING

            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            in_flight = asyncio.ensure_future(
                stub.GetProduct(catalog_pb2.GetProductRequest(product_id="p1"), timeout=10)
            )
            # SIGTERM only once the call is inside the handler (which takes 1.5 s).
            await _until_started(f"127.0.0.1:{ports['metrics']}")
            proc.send_signal(signal.SIGTERM)

            assert await next_status() == NOT_SERVING
            response = await in_flight
            assert response.product.product_id == "p1"
            assert seen == [NOT_SERVING, SERVING, NOT_SERVING]
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _until_started(metrics_address: str) -> None:
    """Poll the service's own metrics until the call has reached the handler."""
    async with asyncio.timeout(5):
        while not value(
            await scrape(metrics_address), "grpc_server_started_total", grpc_method="GetProduct"
        ):
            await asyncio.sleep(0.02)
