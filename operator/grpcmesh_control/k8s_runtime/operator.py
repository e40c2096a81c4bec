"""The operator process: kopf (watching, handlers, admission, liveness) and the xDS control plane
(publisher, ADS server, /metrics) in one asyncio loop.

``Operator.run`` owns one TaskGroup: the publisher's debounce loop, the periodic resync, the
event poster, the ADS gRPC server and kopf itself. The control plane starts first, so the first
watch events already publish into a serving cache; when kopf stops (stop flag, SIGTERM) the
rest is cancelled and the servers are stopped in ``finally``.

Peering: kopf runs ``--standalone``; the chart runs one replica with the Recreate strategy, so
two operators never write the same objects (no leader election; a rollout has a short gap,
during which Envoys keep their last config).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import grpc
import kopf
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc

from grpcmesh_control.k8s_runtime.client import ApiError, KubeClient
from grpcmesh_control.k8s_runtime.handlers import register_handlers
from grpcmesh_control.k8s_runtime.mesh import MeshState
from grpcmesh_control.k8s_runtime.metrics import OperatorMetrics
from grpcmesh_control.k8s_runtime.reconcile import Reconciler
from grpcmesh_control.k8s_runtime.settings import RuntimeSettings
from grpcmesh_control.model import MethodCatalog
from grpcmesh_control.runtime.metrics import ControlPlaneMetrics, MeteredSnapshotCache
from grpcmesh_control.runtime.publisher import Publisher
from grpcmesh_control.xds import AdsServicer

__all__ = ["Operator", "run_operator"]

log = logging.getLogger(__name__)

_EVENT_QUEUE = 1000
_ANNOTATION_PREFIX = "grpcmesh.io"

Event = tuple[dict[str, Any], str, str, str]


class Operator:
    """The parts are attributes (tests and debugging); ``reconciler`` exists once ``run``
    has connected to the API."""

    def __init__(self, settings: RuntimeSettings, catalog: MethodCatalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.metrics = ControlPlaneMetrics()
        self.operator_metrics = OperatorMetrics(self.metrics.registry)
        self.cache = MeteredSnapshotCache(self.metrics)
        self.publisher = Publisher(self.cache, catalog, on_rebuild=self.metrics.rebuilt)
        self.state = MeshState(self.publisher.update, catalog)
        self.metrics.observe(cache=self.cache, source_problems=self.state.invalid_count)
        self.registry = kopf.OperatorRegistry()
        register_handlers(self.registry, self)
        self.xds_port: int | None = None
        self.metrics_port: int | None = None
        self._reconciler: Reconciler | None = None
        self._events: asyncio.Queue[Event] | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def reconciler(self) -> Reconciler:
        if self._reconciler is None:
            raise RuntimeError("the operator is not running")
        return self._reconciler

    # --- hooks the kopf handlers call ------------------------------------------------------

    def configure_kopf(self, settings: kopf.OperatorSettings) -> None:
        # Progress and the last-handled spec in our annotations, nothing under status.kopf.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=_ANNOTATION_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=_ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.posting.level = logging.ERROR  # our own events say what was done
        settings.watching.reconnect_backoff = 1.0
        settings.persistence.consistency_timeout = self.settings.consistency_timeout
        if self.settings.webhook_port is not None:
            settings.admission.server = kopf.WebhookServer(
                addr=self.settings.webhook_addr,
                port=self.settings.webhook_port,
                host=self.settings.webhook_host,
                certfile=self.settings.webhook_certfile,
                pkeyfile=self.settings.webhook_pkeyfile,
            )
            settings.admission.managed = None  # the chart installs the webhook configurations

    async def stopping(self) -> None:
        """kopf's cleanup: end the ADS streams now, so kopf does not wait for them as hung
        tasks (Envoys reconnect to the next operator and keep their config meanwhile)."""
        log.info("operator stopping")
        if self._server is not None:
            await self._server.stop(self.settings.stop_grace)

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue a Kubernetes Event about ``body``; dropped (logged) if the queue is full."""
        if self._events is None:
            return
        try:
            self._events.put_nowait((dict(body), type_, reason, message))
        except asyncio.QueueFull:
            log.warning("event queue full, dropped %s %s", reason, message)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(
        self,
        stop_flag: asyncio.Event | threading.Event | None = None,
        on_ready: Callable[[Operator], None] | None = None,
    ) -> None:
        """Serve until ``stop_flag`` is set or kopf is signalled. ``on_ready`` is called once
        the ADS server listens (``xds_port`` is then known)."""
        settings = self.settings
        client = await KubeClient.connect(settings)
        self._events = asyncio.Queue(_EVENT_QUEUE)
        self._reconciler = Reconciler(
            client,
            self.state,
            self.publisher,
            self.cache,
            settings,
            self.operator_metrics,
            self.post_event,
        )
        server = self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AdsServicer(self.cache, on_push=self.metrics.pushed), server
        )
        runner = web.AppRunner(self._metrics_app(), access_log=None)
        await runner.setup()
        try:
            try:
                self.xds_port = server.add_insecure_port(f"{settings.xds_host}:{settings.xds_port}")
            except RuntimeError as exc:
                raise OSError(f"xDS port {settings.xds_port}: {exc}") from None
            await server.start()
            if settings.metrics_port is not None:
                await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
                self.metrics_port = int(runner.addresses[0][1])
            log.info("xDS on port %s, metrics on port %s", self.xds_port, self.metrics_port)
            if on_ready is not None:
                on_ready(self)
            async with asyncio.TaskGroup() as tasks:
                background = [
                    tasks.create_task(self.publisher.run(), name="publisher"),
                    tasks.create_task(self._resync(), name="resync"),
                    tasks.create_task(self._post_events(client), name="events"),
                    tasks.create_task(server.wait_for_termination(), name="xds-server"),
                ]
                try:
                    await kopf.operator(
                        registry=self.registry,
                        clusterwide=True,
                        standalone=True,
                        liveness_endpoint=settings.liveness_endpoint,
                        stop_flag=stop_flag,
                    )
                finally:
                    for task in background:
                        task.cancel()
        finally:
            await runner.cleanup()
            await server.stop(settings.stop_grace)
            await client.close()
            self._reconciler = self._server = None

    async def _resync(self) -> None:
        """Re-reconcile every known MeshService periodically: drift, Deployment rollouts,
        endpoints and sidecar ACKs all reach the status this way."""
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            for key in self.reconciler.known():
                try:
                    await self.reconciler.reconcile(key=key)
                except Exception:
                    log.exception("resync of %s/%s failed", *key)

    async def _post_events(self, client: KubeClient) -> None:
        assert self._events is not None
        while True:
            body, type_, reason, message = await self._events.get()
            with contextlib.suppress(ApiError):
                await client.create_event(body, type_, reason, message, datetime.now(UTC))

    def _metrics_app(self) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=self.metrics.exposition(),
                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app


async def run_operator(
    settings: RuntimeSettings,
    *,
    catalog: MethodCatalog | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator (kopf + xDS control plane) until stopped."""
    await Operator(settings, catalog).run(stop_flag=stop_flag)
