"""The xDS host: the one control-plane core both modes run.

``XdsHost`` owns the snapshot cache, the debounced publisher, the ADS gRPC server and the
read-only HTTP endpoints that show what it serves. Local mode (``runtime.controlplane``) feeds
it from files and adds ``POST /apply``; the cluster operator (``cluster.controller.operator``) feeds
it from the API and adds ``/readyz``. Everything else is the same code in both.

==============================  ==============================================================
``GET /healthz``                200 ``ok`` while the process serves.
``GET /status``                 the mesh as the control plane sees it (``status_document``):
                                services, endpoints, problems, and every node's ACK/NACK
                                and snapshot group (replicas share one snapshot; ACKs and
                                NACKs stay per node).
``GET /debug/nodes``            the ``nodes`` part of ``/status`` alone.
``GET /debug/snapshot?node=ID`` the node's current snapshot, resources as proto3 JSON (its
                                SDS secrets included, private keys redacted).
``GET /metrics``                Prometheus text format (``runtime.metrics``).
==============================  ==============================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import grpc
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST

from grpcmesh_control.host.metrics import ControlPlaneMetrics, MeteredSnapshotCache
from grpcmesh_control.host.reflection import ExposedReflection
from grpcmesh_control.mesh.ca import CertificateAuthority
from grpcmesh_control.mesh.catalogs import ProtoSet
from grpcmesh_control.mesh.certificates import (
    CertificateSettings,
    NodeCertificate,
    WorkloadCertificates,
)
from grpcmesh_control.mesh.clock import Clock
from grpcmesh_control.mesh.gateway_tls import GatewayCertificate, GatewayCertificates
from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog
from grpcmesh_control.mesh.publisher import DEFAULT_MAX_DELAY, DEFAULT_WINDOW, Publisher
from grpcmesh_control.mesh.translate import GatewayTls, SnapshotBuilder
from grpcmesh_control.mesh.translate.versioned import SECRET, TypeResources
from grpcmesh_control.mesh.xds import (
    AdsServicer,
    NodeAuthenticator,
    NodeStatus,
    VersionedSnapshot,
)

__all__ = [
    "REDACTED",
    "BoundPorts",
    "XdsHost",
    "join_host_port",
    "json_response",
    "snapshot_document",
    "status_document",
]


@dataclass(frozen=True)
class BoundPorts:
    """Where the host listens (ports asked as 0 are the ones the OS chose)."""

    xds_port: int
    http_port: int | None


REDACTED = "[redacted]"
"""What debug output shows in place of a private key."""


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class XdsHost:
    """The parts are attributes (``metrics``, ``cache``, ``publisher``), for the modes, tests and
    debugging. ``problems`` adds the source's own problems (invalid files or resources) to
    ``/status``; ``origin_of`` names where a service came from (its file, in local mode).

    With a mesh ``ca``, the sidecars speak mTLS (STRICT unless a MeshService says PERMISSIVE)
    and every connected node is issued its workload certificate over SDS
    (``certificates``, renewed while ``serving``); without one, plaintext.

    With an ``authenticator``, ADS streams are served only to callers proving a node identity,
    each only its own nodes' configuration (``mesh.xds.server``; refusals counted in
    ``grpcmesh_xds_refusals_total``). ``serving(..., tls=)`` serves ADS over TLS.

    With ``use_gateway_tls`` the ingress gateway serves TLS to outside clients with a
    configured certificate (``mesh.gateway_tls``), replaced live by ``gateway.update``."""

    def __init__(
        self,
        catalog: MethodCatalog | None = None,
        *,
        clock: Clock | None = None,
        window: float = DEFAULT_WINDOW,
        max_delay: float = DEFAULT_MAX_DELAY,
        problems: Callable[[], Sequence[str]] = tuple,
        origin_of: Callable[[MeshService], str | None] = lambda svc: None,
        protos: Callable[[], ProtoSet] | None = None,
        ca: CertificateAuthority | None = None,
        certificates: CertificateSettings | None = None,
        authenticator: NodeAuthenticator | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.metrics = ControlPlaneMetrics()
        self.cache = MeteredSnapshotCache(self.metrics)
        self._clock = clock
        self._builder = SnapshotBuilder()
        self.publisher = Publisher(
            self.cache,
            catalog,
            clock=clock,
            window=window,
            max_delay=max_delay,
            build=self._builder,
            on_rebuild=self.metrics.rebuilt,
        )
        self.certificates: WorkloadCertificates | None = None
        """Issues and renews the nodes' workload certificates (None: no mesh CA, plaintext)."""
        self.gateway: GatewayCertificates | None = None
        """Serves the ingress gateway's certificate for outside clients (None: its listener
        is plaintext)."""
        self._problems = problems
        self._origin_of = origin_of
        self._server: grpc.aio.Server | None = None
        self.reflection = (
            None if protos is None else ExposedReflection(protos, self._exposed_grpc_services)
        )
        """Server reflection for the exposed services, on the xDS port (the ingress routes it
        there); only when the mode gives the host its protos."""
        if ca is not None:
            self.use_ca(ca, certificates)

    def use_ca(self, ca: CertificateAuthority, certificates: CertificateSettings | None) -> None:
        """Speak mTLS with workload certificates from ``ca`` (what ``ca=`` in the constructor
        does), for a mode that gets its CA only once it runs (the operator reads it from a
        Secret). Only before the first snapshot is built and before ``serving``: a snapshot
        built without TLS would stay as it is until its inputs changed."""
        if self.certificates is not None:
            raise RuntimeError("the xDS host already has a mesh CA")
        if self.publisher.version is not None or self._server is not None:
            raise RuntimeError("a mesh CA must be set before the first snapshot is built")
        settings = certificates or CertificateSettings()
        self._builder.tls = settings.tls
        certs = self.certificates = WorkloadCertificates(
            self.cache, ca, settings, clock=self._clock, namespace_of=self._namespace_of
        )
        self.metrics.observe_certificates(certs.all_held, lambda: certs.roots_not_after)

    def use_gateway_tls(
        self, tls: GatewayTls, certificate: GatewayCertificate | None = None
    ) -> GatewayCertificates:
        """The ingress listener serves TLS as ``tls`` says, with ``certificate`` (or, while it
        is None, with none yet: the listener waits for ``gateway.update``). Only before the
        first snapshot is built, like ``use_ca``."""
        if self.gateway is not None:
            raise RuntimeError("the xDS host already serves the gateway TLS")
        if self.publisher.version is not None or self._server is not None:
            raise RuntimeError("gateway TLS must be set before the first snapshot is built")
        gateway = GatewayCertificates(self.cache, certificate, tls)
        self._builder.gateway_tls = tls
        self.gateway = gateway
        return self.gateway

    def _namespace_of(self, service: str) -> str | None:
        registry = self.publisher.registry
        svc = None if registry is None else registry.service(service)
        return None if svc is None else svc.namespace

    def _exposed_grpc_services(self) -> tuple[str, ...]:
        registry = self.publisher.registry
        return () if registry is None else registry.exposed_grpc_services()

    # --- HTTP --------------------------------------------------------------------------------

    def http_app(self, routes: Iterable[web.RouteDef] = ()) -> web.Application:
        """The read-only endpoints, plus the mode's own ``routes``."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/debug/nodes", self._nodes)
        app.router.add_get("/debug/snapshot", self._snapshot)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_routes(list(routes))
        return app

    def status(self) -> dict[str, Any]:
        publisher, cache = self.publisher, self.cache
        inputs = publisher.inputs
        return status_document(
            version=publisher.version,
            inputs_version=inputs.version,
            services=inputs.services,
            endpoints=inputs.endpoint_map,
            problems=[*self._problems(), *publisher.problems()],
            nodes=cache.nodes(),
            snapshot_of=cache.config_snapshot,
            secrets_of=cache.node_secrets,
            node_problem=publisher.node_problem,
            origin_of=self._origin_of,
            certificate_of=(lambda node_id: None)
            if self.certificates is None
            else self.certificates.held,
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _status(self, request: web.Request) -> web.Response:
        return json_response(self.status())

    async def _nodes(self, request: web.Request) -> web.Response:
        return json_response({"nodes": self.status()["nodes"]})

    async def _snapshot(self, request: web.Request) -> web.Response:
        node_id = request.query.get("node", "")
        if not node_id:
            return json_response({"error": "query parameter node is missing"}, status=400)
        snapshot = self.cache.node_snapshot(node_id)
        if snapshot is None:
            problem = self.publisher.node_problem(node_id)
            return json_response(
                {"error": f"no snapshot for node {node_id}", "problem": problem}, status=404
            )
        return json_response(snapshot_document(node_id, snapshot))

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # --- serving -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(
        self,
        app: web.Application,
        *,
        xds_host: str,
        xds_port: int,
        http_host: str,
        http_port: int | None,
        stop_grace: float,
        tls: ServingTls | None = None,
    ) -> AsyncIterator[BoundPorts]:
        """ADS on ``xds_host:xds_port`` and ``app`` on ``http_host:http_port`` (None: no HTTP)
        while the block runs. ``tls``: (PEM private key, PEM certificate chain) to serve ADS
        over TLS with, or a function returning the current pair (asked at each handshake; a
        new pair serves new connections, as after a root rotation); None: plaintext.
        ``OSError`` when a port cannot be bound."""
        # Without so_reuseport=0 grpc sets SO_REUSEPORT, and a second control plane on the same
        # port would silently share the Envoys' connections with the first.
        server = self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            AdsServicer(
                self.cache,
                on_push=self.metrics.pushed,
                authenticator=self.authenticator,
                on_refused=self.metrics.refused,
            ),
            server,
        )
        if self.reflection is not None:
            server.add_generic_rpc_handlers(self.reflection.handlers())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            try:
                address = join_host_port(xds_host, xds_port)
                bound_xds = (
                    server.add_insecure_port(address)
                    if tls is None
                    else server.add_secure_port(address, _server_credentials(tls))
                )
            except RuntimeError as exc:  # grpc reports a failed bind this way
                raise OSError(f"xDS port {xds_host}:{xds_port}: {exc}") from None
            await server.start()
            bound_http = None
            if http_port is not None:
                await web.TCPSite(runner, http_host, http_port).start()
                bound_http = int(runner.addresses[0][1])
            async with self._renewing():
                yield BoundPorts(bound_xds, bound_http)
        finally:
            await runner.cleanup()
            await server.stop(stop_grace)
            self._server = None

    @contextlib.asynccontextmanager
    async def _renewing(self) -> AsyncIterator[None]:
        if self.certificates is None:
            yield
            return
        task = asyncio.create_task(self.certificates.run(), name="certificates")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_for_termination(self) -> None:
        """Until the ADS server stops (``stop_serving``, or the ``serving`` block ends)."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop_serving(self, grace: float) -> None:
        """End the ADS streams now (Envoys reconnect elsewhere and keep their config)."""
        if self._server is not None:
            await self._server.stop(grace)


ServingTls = tuple[bytes, bytes] | Callable[[], tuple[bytes, bytes]]
"""(PEM private key, PEM certificate chain), or a function returning the current one."""


def _server_credentials(tls: ServingTls) -> grpc.ServerCredentials:
    if not callable(tls):
        return grpc.ssl_server_credentials([tls])
    current = tls()
    served = [current]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        pair = tls()
        if pair == served[0]:
            return None  # unchanged: keep serving the one configured
        served[0] = pair
        return grpc.ssl_server_certificate_configuration([pair])

    # grpc's docs: the fetcher returns None to keep the current configuration (its stubs
    # do not say so)
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
    return grpc.dynamic_ssl_server_credentials(
        grpc.ssl_server_certificate_configuration([current]), fetcher
    )


def status_document(
    *,
    version: str | None,
    inputs_version: str,
    services: Sequence[MeshService],
    endpoints: Mapping[str, Sequence[Endpoint]],
    problems: list[str],
    nodes: list[NodeStatus],
    snapshot_of: Callable[[str], VersionedSnapshot | None],
    node_problem: Callable[[str], str | None],
    origin_of: Callable[[MeshService], str | None] = lambda svc: None,
    secrets_of: Callable[[str], TypeResources | None] = lambda node_id: None,
    certificate_of: Callable[[str], NodeCertificate | None] = lambda node_id: None,
) -> dict[str, Any]:
    """``GET /status`` (pure). ``version``: inputs of the published snapshots (None before the
    first rebuild); ``inputs_version``: the newest inputs, which ``services`` describe (equal to
    ``version`` once built). A node has converged when ``acked_version == snapshot_version`` (its
    config); ``secrets`` says which version of its SDS secrets it is served and whether it
    ACKed them (None: it is served none, e.g. no mesh CA); ``identity`` and ``certificate``
    (``not_after``, ``issued_at``, ``serial``) name the workload certificate it holds (None:
    none, e.g. no mesh CA, or the node disconnected)."""
    return {
        "version": version,
        "inputs_version": inputs_version,
        "services": [
            {
                "name": svc.name,
                "namespace": svc.namespace,
                "file": origin_of(svc),
                "expose": svc.expose,
                "versions": [{"name": v.name, "weight": v.weight} for v in svc.versions],
                "endpoints": {
                    "total": len(endpoints.get(svc.name, ())),
                    "ready": sum(1 for e in endpoints.get(svc.name, ()) if e.ready),
                },
            }
            for svc in services
        ],
        "problems": problems,
        "nodes": [
            _node(status, snapshot_of, node_problem, secrets_of, certificate_of) for status in nodes
        ],
    }


def _node(
    status: NodeStatus,
    snapshot_of: Callable[[str], VersionedSnapshot | None],
    node_problem: Callable[[str], str | None],
    secrets_of: Callable[[str], TypeResources | None],
    certificate_of: Callable[[str], NodeCertificate | None],
) -> dict[str, Any]:
    snapshot = snapshot_of(status.node_id)
    secrets = secrets_of(status.node_id)
    cert = certificate_of(status.node_id)
    nack = status.nack
    return {
        "id": status.node_id,
        "group": status.group,
        "connected": status.connected,
        "connected_since": _timestamp(status.connected_since),
        "acked_version": status.acked_snapshot,
        "snapshot_version": None if snapshot is None else snapshot.version,
        "nack": None
        if nack is None
        else {
            "type_url": nack.type_url,
            "version": nack.version,
            "message": nack.message,
            "at": _timestamp(nack.at),
        },
        "problem": node_problem(status.node_id),
        "secrets": None
        if secrets is None
        else {"version": secrets.version, "acked": status.acked.get(SECRET) == secrets.version},
        "identity": None if cert is None else str(cert.identity),
        "certificate": None
        if cert is None
        else {
            "not_after": _timestamp(cert.not_after.timestamp()),
            "issued_at": _timestamp(cert.issued_at.timestamp()),
            "serial": f"{cert.serial:x}",
        },
    }


def snapshot_document(node_id: str, snapshot: VersionedSnapshot) -> dict[str, Any]:
    """``GET /debug/snapshot``: per type URL, its version and resources as proto3 JSON; a
    secret's private key shows as ``REDACTED``, never its bytes."""
    return {
        "node": node_id,
        "version": snapshot.version,
        "resources": {
            type_url: {
                "version": typed.version,
                "resources": [
                    _redacted(MessageToDict(packed), type_url)
                    for packed in typed.resources.values()
                ],
            }
            for type_url, typed in snapshot.by_type.items()
        },
    }


def _redacted(resource: dict[str, Any], type_url: str) -> dict[str, Any]:
    """A resource as JSON; a Secret's private key (in any data source form) replaced."""
    if type_url != SECRET:
        return resource
    certificate = resource.get("tlsCertificate")
    if isinstance(certificate, dict) and "privateKey" in certificate:
        certificate["privateKey"] = REDACTED
    return resource


def _timestamp(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def json_response(document: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(document, indent=2) + "\n", status=status, content_type="application/json"
    )
