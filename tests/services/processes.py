"""Run a reference service the way a launcher or a pod does: `python -m <module>`, configured
only by GRPCMESH_* environment variables (through the one launcher, ``tests.processes``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from tests import processes


@asynccontextmanager
async def service_process(
    module: str, workdir: Path, env: dict[str, str]
) -> AsyncIterator[grpc.aio.Channel]:
    """Start the service on free loopback ports; yield a channel once it reports SERVING; on
    exit, SIGTERM it and assert it stops cleanly (exit 0)."""
    name = module.removeprefix("grpcmesh_")
    async with processes.service_process(name, module, workdir, env) as service:
        async with grpc.aio.insecure_channel(service.address) as channel:
            yield channel
        assert await service.stop() == 0, service.log.read_text()[-3000:]
