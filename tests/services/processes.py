"""Run a reference service the way a launcher or a pod does: `python -m <module>`, configured
only by GRPCMESH_* environment variables."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT = 20.0


@asynccontextmanager
async def service_process(
    module: str, workdir: Path, env: dict[str, str]
) -> AsyncIterator[grpc.aio.Channel]:
    """Start the service on free loopback ports; yield a channel once it reports SERVING; on
    exit, SIGTERM it and assert it stops cleanly (exit 0)."""
    ports_file = workdir / "ports.json"
    log_path = workdir / "server.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GRPCMESH_")} | {
        "GRPCMESH_PORT": "0",
        "GRPCMESH_METRICS_PORT": "0",
        "GRPCMESH_DRAIN_SECONDS": "0",
        "GRPCMESH_PORTS_FILE": str(ports_file),
        **env,
    }
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env=full_env, stdout=log, stderr=log
        )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        port = 0
        while not port:  # bounded poll: the server writes the file once bound
            assert process.returncode is None, log_path.read_text()
            assert loop.time() < deadline, f"{module} did not write its ports file"
            try:
                port = json.loads(ports_file.read_text())["grpc"]
            except (FileNotFoundError, ValueError):
                await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING
            while (await health.Check(health_pb2.HealthCheckRequest())).status != serving:
                assert loop.time() < deadline, f"{module} never reported SERVING"
                await asyncio.sleep(0.05)
            yield channel
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=START_TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
