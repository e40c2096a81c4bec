"""ServiceApp: server bootstrap and lifecycle for every service on the kit.

Lifecycle: bind -> health NOT_SERVING -> on_start hooks (open stores, resume work, wait for the
sidecar) -> SERVING -> ... SIGTERM -> NOT_SERVING at once -> drain (still serving, so callers
that have not yet seen the health change do not fail) -> stop(grace) lets in-flight calls finish
-> on_stop hooks.

With ``workers`` > 1, ``run()`` supervises that many worker processes on one port instead, each
going through this lifecycle (``grpcmesh_kit.workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import Counter

from grpcmesh_kit.channels import ChannelFactory
from grpcmesh_kit.config import KitSettings, SettingsWatcher
from grpcmesh_kit.interceptors import LayeredServer, client_interceptors, server_layers
from grpcmesh_kit.logs import configure_logging
from grpcmesh_kit.metrics import MetricsEndpoint
from grpcmesh_kit.tracing import create_tracer_provider, otlp_exporter
from grpcmesh_kit.workers import WorkerLink, WorkerPool, service_info

log = logging.getLogger(__name__)

S = TypeVar("S", bound=KitSettings)
Hook = Callable[[], Awaitable[None]]
Register = Callable[[grpc.aio.Server], None]

OVERALL = ""  # the health service's name for the whole server


class SidecarNotReady(RuntimeError):
    """The sidecar did not report ready in time; the app must not claim to be SERVING."""


async def wait_for_sidecar(admin: str, timeout: float) -> None:
    """Poll Envoy's /ready until it answers 200 (LIVE: initial xDS fetch done)."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as response:
                return int(response.status) == 200
        except OSError:
            return False

    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(probe):
        if asyncio.get_running_loop().time() > deadline:
            raise SidecarNotReady(f"sidecar at {admin} not ready after {timeout:.0f}s")
        await asyncio.sleep(0.1)
    log.info("sidecar %s ready", admin)


class ServiceApp(Generic[S]):
    def __init__(self, settings: S, *, tracer_provider: TracerProvider | None = None) -> None:
        self._watcher = SettingsWatcher(settings)
        self._owns_tracer = tracer_provider is None
        self.tracer_provider = tracer_provider or create_tracer_provider(
            settings.service_name,
            otlp_exporter(settings.otlp_endpoint),
            settings.trace_sampling_ratio,
            version=settings.version,
        )
        self.metrics = MetricsEndpoint()
        # A reload is observable (tests and operators poll it instead of waiting a fixed time).
        reloads = Counter(
            "grpcmesh_config_reloads",
            "Times new settings from the config file took effect.",
            registry=self.metrics.registry,
        )
        self._watcher.subscribe(lambda _settings: reloads.inc())
        # Which service and version answer on this /metrics, as a constant-1 info series.
        service_info(self.metrics.registry, settings)
        self.channels = ChannelFactory(
            lambda: self.settings, client_interceptors(self.metrics, self.tracer_provider)
        )
        self._services: list[tuple[str, Register]] = []
        self._extra_interceptors: list[grpc.aio.ServerInterceptor] = []
        self._start_hooks: list[Hook] = []
        self._stop_hooks: list[Hook] = []
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._worker: WorkerLink | None = None
        """Set in a worker of a multi-worker app (see ``grpcmesh_kit.workers``)."""
        self.port = 0
        self.metrics_port = 0

    @property
    def settings(self) -> S:
        """The current settings, re-read whenever the config file changes."""
        return self._watcher.current

    @property
    def watcher(self) -> SettingsWatcher[S]:
        return self._watcher

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def metrics_address(self) -> str:
        return f"{self.settings.metrics_host}:{self.metrics_port}"

    @property
    def service_names(self) -> list[str]:
        return [name for name, _ in self._services]

    def add_service(self, descriptor: ServiceDescriptor, register: Register) -> None:
        self._services.append((descriptor.full_name, register))

    def add_interceptor(self, interceptor: grpc.aio.ServerInterceptor) -> None:
        """Add a gRPC server interceptor; call before start. It runs before the kit's layers
        (which wrap the handlers themselves), so what it does to a call (e.g. an injected fault
        in tests) reaches the caller without passing through the kit's metrics and tracing."""
        self._extra_interceptors.append(interceptor)

    def on_start(self, hook: Hook) -> None:
        self._start_hooks.append(hook)

    def on_stop(self, hook: Hook) -> None:
        self._stop_hooks.append(hook)

    def _server_options(self) -> list[tuple[str, int]]:
        s = self.settings
        # Workers of one app share the port: SO_REUSEPORT (gRPC's default on Linux; said here,
        # not assumed).
        extra = [("grpc.so_reuseport", 1)] if self._worker is not None else []
        return [
            *extra,
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.keepalive_time_ms", s.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", s.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            # Accept client keepalive pings down to 10 s instead of answering with GOAWAY.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    async def start(self) -> None:
        """Bind, answer health as NOT_SERVING, run start hooks, then report SERVING.

        A worker runs its start hooks before it binds (the kernel hands a bound worker
        connections at once) and reports SERVING when its parent says every worker is bound."""
        s = self.settings
        worker = self._worker
        server = grpc.aio.server(
            interceptors=self._extra_interceptors,
            options=self._server_options(),
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        layered = cast(
            grpc.aio.Server,
            LayeredServer(
                server,
                server_layers(self.metrics, self.tracer_provider, lambda: (s.host, self.port)),
            ),
        )
        for _name, register in self._services:
            register(layered)
        reflection.enable_server_reflection(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        for name in (OVERALL, *self.service_names):
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server, self._health = server, health
        try:
            if worker is None:
                await self._bind(server)
                await self._start_hooks_and_sidecar()
            else:
                await self._start_hooks_and_sidecar()
                await self._bind(server)
                await worker.ready_then_serve()
        except BaseException:
            # Nothing half-started may outlive a failed start: close the server, run stop hooks.
            await self.stop(drain=False)
            raise
        self._watch_task = asyncio.create_task(self._watcher.watch(), name="config-watch")
        for name in (OVERALL, *self.service_names):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving", s.service_name)

    async def _bind(self, server: grpc.aio.Server) -> None:
        s = self.settings
        if self._worker is None:
            self.port = server.add_insecure_port(f"{s.host}:{s.port}")
            self.metrics_port = self.metrics.start(s.metrics_host, s.metrics_port)
        else:
            # The parent holds the port (port 0 resolved) and serves the summed /metrics.
            self.port = server.add_insecure_port(f"{s.host}:{self._worker.port}")
            self.metrics_port = s.metrics_port
        await server.start()
        if s.ports_file is not None and self._worker is None:
            # Written once bound, before SERVING: launchers learn the ports here and must still
            # wait for health to say SERVING before sending traffic.
            s.ports_file.write_text(json.dumps({"grpc": self.port, "metrics": self.metrics_port}))
        if self._worker is None:
            log.info(
                "%s listening on %s, metrics on %s",
                s.service_name,
                self.address,
                self.metrics_address,
            )
        else:
            log.info(
                "%s worker %d listening on %s", s.service_name, self._worker.index, self.address
            )

    async def _start_hooks_and_sidecar(self) -> None:
        s = self.settings
        for hook in self._start_hooks:
            await hook()
        if s.sidecar_admin:
            await wait_for_sidecar(s.sidecar_admin, s.sidecar_ready_timeout_seconds)

    async def stop(self, *, drain: bool = True) -> None:
        """NOT_SERVING, drain, stop(grace), stop hooks. Safe to call twice."""
        server, health = self._server, self._health
        self._server = self._health = None
        if server is None or health is None:
            return
        s = self.settings
        await health.enter_graceful_shutdown()
        if drain and s.drain_seconds > 0:
            log.info("draining for %.1fs", s.drain_seconds)
            await asyncio.sleep(s.drain_seconds)
        await server.stop(s.grace_seconds)
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        for hook in reversed(self._stop_hooks):
            await hook()
        await self.channels.close()
        await asyncio.to_thread(self.metrics.stop)
        if self._owns_tracer:
            self.tracer_provider.shutdown()
        log.info("%s stopped", s.service_name)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ServiceApp[S]]:
        """Start, yield, stop: for tests and embedding (no signal handlers)."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully. With ``workers`` > 1 this
        process supervises that many workers instead (``grpcmesh_kit.workers``); in a worker
        it serves until signalled or until its parent is gone."""
        s = self.settings
        configure_logging(s.service_name, s.log_level, s.log_format)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self._worker = WorkerLink.from_env()
        if self._worker is None and s.workers > 1:
            try:
                await WorkerPool(s).run(stop)
            finally:
                await self.channels.close()
                if self._owns_tracer:
                    self.tracer_provider.shutdown()
            return
        orphaned: asyncio.Task[None] | None = None
        if self._worker is not None:
            await self._worker.open()
            orphaned = asyncio.create_task(self._worker.closed(), name="worker-link")
            orphaned.add_done_callback(lambda _task: stop.set())
        try:
            await self.start()
            try:
                await stop.wait()
                log.info("shutdown signal received")
            finally:
                await self.stop()
        finally:
            if orphaned is not None:
                orphaned.cancel()
            if self._worker is not None:
                self._worker.close()
