"""The local-mode control plane process: ADS over gRPC, the file watcher, the admin HTTP API.

``ControlPlane.run`` owns one TaskGroup (publisher debounce loop, file watcher, gRPC server) and
stops everything it started when cancelled. ``serve`` is the entry the CLI wires to
``grpcmesh control-plane``; ``main`` is ``python -m grpcmesh_control control-plane``.

Startup order: read the run directory and build (so the first Envoy request is answered with
complete config), bind both ports, then write ``ready_file`` (``{"xds_address",
"admin_address", "xds_port", "admin_port", "pid"}``), which lets a launcher pass port 0.
Restart safety: all state is in files and versions are content hashes, so a restarted control
plane serves the versions it served before; reconnecting Envoys ACK them without a change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc

from grpcmesh_control.catalogs import load_catalog
from grpcmesh_control.model import MethodCatalog
from grpcmesh_control.runtime.admin import AdminContext, admin_app
from grpcmesh_control.runtime.atomic import write_atomically
from grpcmesh_control.runtime.clock import Clock, SystemClock
from grpcmesh_control.runtime.metrics import ControlPlaneMetrics, MeteredSnapshotCache
from grpcmesh_control.runtime.publisher import DEFAULT_MAX_DELAY, DEFAULT_WINDOW, Publisher
from grpcmesh_control.runtime.watcher import DEFAULT_POLL_INTERVAL, FileSources
from grpcmesh_control.translate.naming import LOCALHOST
from grpcmesh_control.xds import AdsServicer

__all__ = [
    "BoundAddresses",
    "ControlPlane",
    "ControlPlaneSettings",
    "main",
    "run_control_plane",
    "serve",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlPlaneSettings:
    """How the control plane runs. Ports 0 pick free ones (see ``ready_file``)."""

    state_dir: Path
    """The run directory: ``resources/*.yaml`` and ``endpoints.json`` are read from it."""
    xds_port: int = 0
    admin_port: int = 0
    host: str = LOCALHOST
    """Both servers bind here. Loopback by default: the admin API can change the mesh."""
    ready_file: Path | None = None
    """Written (atomically) once both ports listen; removed on a clean stop."""
    poll_interval: float = DEFAULT_POLL_INTERVAL
    """Seconds between polls of the run directory (100 ms)."""
    debounce_window: float = DEFAULT_WINDOW
    """Quiet time before a rebuild (50 ms)."""
    debounce_max_delay: float = DEFAULT_MAX_DELAY
    """Longest a rebuild waits while updates keep coming (500 ms)."""
    stop_grace: float = 1.0
    """Seconds in-flight ADS streams get when stopping (Envoys reconnect elsewhere anyway)."""


@dataclass(frozen=True)
class BoundAddresses:
    host: str
    xds_port: int
    admin_port: int

    @property
    def xds_address(self) -> str:
        return _join_host_port(self.host, self.xds_port)

    @property
    def admin_address(self) -> str:
        return _join_host_port(self.host, self.admin_port)


class ControlPlane:
    """The parts (cache, publisher, sources, metrics) are attributes, for tests and debugging."""

    def __init__(
        self,
        settings: ControlPlaneSettings,
        *,
        catalog: MethodCatalog | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        catalog = catalog if catalog is not None else load_catalog()
        self.metrics = ControlPlaneMetrics()
        self.cache = MeteredSnapshotCache(self.metrics)
        self.publisher = Publisher(
            self.cache,
            catalog,
            clock=self.clock,
            window=settings.debounce_window,
            max_delay=settings.debounce_max_delay,
            on_rebuild=self.metrics.rebuilt,
        )
        self.sources = FileSources(settings.state_dir, self.publisher.update, catalog=catalog)
        self.metrics.observe(cache=self.cache, source_problems=lambda: len(self.sources.problems))

    async def run(self, on_ready: Callable[[BoundAddresses], None] | None = None) -> None:
        """Serve until cancelled. Raises ``OSError`` if a port cannot be bound."""
        settings = self.settings
        self.sources.reload()
        self.publisher.rebuild()

        server = grpc.aio.server(
            # Without this grpc sets SO_REUSEPORT, and a second control plane on the same port
            # would silently share the Envoys' connections with the first.
            options=[("grpc.so_reuseport", 0)]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AdsServicer(self.cache, on_push=self.metrics.pushed), server
        )
        runner = web.AppRunner(
            admin_app(AdminContext(self.sources, self.publisher, self.cache, self.metrics)),
            access_log=None,
        )
        await runner.setup()
        ready_written = False
        try:
            try:
                xds_port = server.add_insecure_port(
                    _join_host_port(settings.host, settings.xds_port)
                )
            except RuntimeError as exc:  # grpc reports a failed bind this way
                raise OSError(f"xDS port {settings.host}:{settings.xds_port}: {exc}") from None
            await server.start()
            await web.TCPSite(runner, settings.host, settings.admin_port).start()
            bound = BoundAddresses(settings.host, xds_port, _bound_port(runner))
            log.info(
                "control plane serving: xDS %s, admin http://%s, state %s",
                bound.xds_address,
                bound.admin_address,
                settings.state_dir,
            )
            if settings.ready_file is not None:
                _write_ready_file(settings.ready_file, bound)
                ready_written = True
            if on_ready is not None:
                on_ready(bound)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.publisher.run(), name="publisher")
                tasks.create_task(
                    self.sources.watch(self.clock, settings.poll_interval), name="watcher"
                )
                tasks.create_task(server.wait_for_termination(), name="xds-server")
        finally:
            if ready_written and settings.ready_file is not None:
                settings.ready_file.unlink(missing_ok=True)
            await runner.cleanup()
            await server.stop(settings.stop_grace)


async def serve(
    state_dir: Path,
    xds_port: int,
    admin_port: int,
    host: str = LOCALHOST,
    ready_file: Path | None = None,
) -> None:
    """Run the control plane on ``state_dir`` until cancelled (``grpcmesh control-plane``)."""
    await run_control_plane(
        ControlPlaneSettings(
            state_dir=state_dir,
            xds_port=xds_port,
            admin_port=admin_port,
            host=host,
            ready_file=ready_file,
        )
    )


async def run_control_plane(settings: ControlPlaneSettings) -> None:
    """Run the control plane with every knob of ``ControlPlaneSettings``, until cancelled."""
    await ControlPlane(settings).run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m grpcmesh_control control-plane --state-dir RUN --xds-port P --admin-port Q``.

    Runs until SIGTERM or SIGINT (exit 0); exit 1 if a port cannot be bound.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_until_signalled(args))
    except asyncio.CancelledError:
        return 0  # SIGTERM/SIGINT: a clean stop
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


async def _until_signalled(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    await serve(args.state_dir, args.xds_port, args.admin_port, args.host, args.ready_file)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m grpcmesh_control")
    commands = parser.add_subparsers(dest="command", required=True)
    cp = commands.add_parser(
        "control-plane", help="serve xDS and the admin API from a local-mode run directory"
    )
    cp.add_argument("--state-dir", type=Path, required=True, help="the run directory (RUN)")
    cp.add_argument("--xds-port", type=int, required=True, help="ADS gRPC port (0: any free)")
    cp.add_argument("--admin-port", type=int, required=True, help="admin HTTP port (0: any free)")
    cp.add_argument("--host", default=LOCALHOST, help="address both servers bind (127.0.0.1)")
    cp.add_argument(
        "--ready-file", type=Path, default=None, help="write the bound addresses here (JSON)"
    )
    cp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_ready_file(path: Path, bound: BoundAddresses) -> None:
    document = {
        "xds_address": bound.xds_address,
        "admin_address": bound.admin_address,
        "xds_port": bound.xds_port,
        "admin_port": bound.admin_port,
        "pid": os.getpid(),
    }
    write_atomically(path, json.dumps(document) + "\n")
