"""Services as real processes for tests and benchmarks, outside a mesh, through local mode's
own launcher: ``ManagedProcess`` (own process group, SIGTERM then SIGKILL, the kernel's death
signal if the test process dies), the kit's environment contract (``mesh.appenv``) and
readiness as local mode's supervisor decides it (grpc.health.v1 says SERVING)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from grpcmesh_control.local.clients import HealthProbe
from grpcmesh_control.local.plan import ProcessSpec
from grpcmesh_control.local.ports import allocate_ports
from grpcmesh_control.local.process import ManagedProcess, death_signal_prefix
from grpcmesh_control.local.supervisor import StartupError
from grpcmesh_control.mesh.appenv import PREFIX, AppEnv
from grpcmesh_control.mesh.translate.naming import LOCALHOST

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    process: ManagedProcess
    address: str
    """Its gRPC address (host:port)."""
    metrics_address: str

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def log(self) -> Path:
        return self.process.spec.log

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (the kit drains), SIGKILL after ``timeout_s``; the exit code."""
        return await self.process.stop(timeout_s)


@asynccontextmanager
async def service_process(
    name: str,
    module: str,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    *,
    start_timeout_s: float = START_TIMEOUT_S,
) -> AsyncIterator[ServiceProcess]:
    """``python -m module`` on free loopback ports, told what the mesh tells an app (no
    sidecar, no drain wait), plus ``env``; yields once it is SERVING, stops it on exit.
    ``StartupError`` (quoting its log) if it exits or is not SERVING in time."""
    port, metrics_port = allocate_ports(2)
    contract = AppEnv(
        service=name,
        version="v1",
        host=LOCALHOST,
        port=port,
        metrics_host=LOCALHOST,
        metrics_port=metrics_port,
        config_file=str(workdir / f"{name}.yaml"),  # absent unless the test writes it
        drain_seconds=0,
    )
    spec = ProcessSpec(
        name=name,
        argv=(sys.executable, "-m", module),
        log=workdir / f"{name}.log",
        cwd=workdir,
        env=MappingProxyType({"PYTHONUNBUFFERED": "1", **contract.variables(), **(env or {})}),
    )
    # Only what the test chose reaches the app, not GRPCMESH_* of the environment pytest runs in.
    base = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    process = ManagedProcess(spec, base_env=base, prefix=death_signal_prefix())
    await process.start()
    try:
        address = f"{LOCALHOST}:{port}"
        await _serving(process, HealthProbe(address), start_timeout_s)
        yield ServiceProcess(name, process, address, f"{LOCALHOST}:{metrics_port}")
    finally:
        if process.running:
            await process.stop(STOP_TIMEOUT_S)


async def _serving(process: ManagedProcess, probe: HealthProbe, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while not await probe.serving():
            if not process.running:
                raise StartupError(
                    process.spec.name, f"exited with {process.returncode}", process.spec.log
                )
            if loop.time() > deadline:
                raise StartupError(
                    process.spec.name, f"not SERVING after {timeout_s:g}s", process.spec.log
                )
            await asyncio.sleep(0.05)
    finally:
        await probe.close()
