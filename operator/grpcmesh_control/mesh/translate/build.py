"""Registry + node -> Snapshot: the one entry point of translation (a pure function).

Proxyless client ``proxyless~<svc>~<replica>``: per MeshService backend, an API listener, a
route configuration, a cluster per version and their load assignments (``proxyless``).
Sidecar ``sidecar~<svc>~<replica>``: listener ``inbound`` (to its app) and ``egress`` (RDS
``egress``: a virtual host per backend of ``<svc>``), cluster ``inbound|<app port>``, an EDS
cluster and load assignment per version of each MeshService backend, a DNS cluster per external
backend. Ingress: listener ``ingress`` (RDS ``ingress``: every exposed service by gRPC path),
an EDS cluster and load assignment per version of every exposed service (``spec.expose``).
"""

from __future__ import annotations

from dataclasses import fields

from grpcmesh_control.mesh.errors import UnknownNode
from grpcmesh_control.mesh.model.catalog import MethodCatalog
from grpcmesh_control.mesh.model.mesh import MeshService
from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.authorization import authorization_filter
from grpcmesh_control.mesh.translate.clusters import (
    collector_cluster,
    external_cluster,
    inbound_cluster,
    service_clusters,
    version_assignment,
)
from grpcmesh_control.mesh.translate.listeners import (
    egress_listener,
    inbound_listener,
    ingress_listener,
)
from grpcmesh_control.mesh.translate.naming import NodeKind, ProxyNode
from grpcmesh_control.mesh.translate.proxyless import (
    proxyless_backends,
    proxyless_cluster,
    proxyless_listener,
    proxyless_route_config,
    sidecar_egress,
)
from grpcmesh_control.mesh.translate.registry import Registry
from grpcmesh_control.mesh.translate.routes import (
    InboundDeadline,
    egress_route_config,
    inbound_deadlines,
    ingress_route_config,
)
from grpcmesh_control.mesh.translate.snapshot import Snapshot
from grpcmesh_control.mesh.translate.tls import GatewayTls, MeshTls
from grpcmesh_control.mesh.translate.versioned import PackCache

__all__ = ["SnapshotBuilder", "build_snapshot"]


def build_snapshot(
    registry: Registry,
    node: ProxyNode,
    memo: SnapshotBuilder | None = None,
    *,
    tls: MeshTls | None = None,
    gateway_tls: GatewayTls | None = None,
) -> Snapshot:
    """The node's complete configuration. Raises ``UnknownNode`` for a sidecar whose service
    the registry does not know: it gets nothing (and stays not ready) until the service exists.
    ``memo`` (a ``SnapshotBuilder``) reuses parts translated for other snapshots (and brings
    its own ``tls`` and ``gateway_tls``); ``tls`` without one: mTLS between sidecars,
    ``gateway_tls``: the ingress serves TLS to outside clients (``translate.tls``)."""
    parts = memo or _Fresh(tls, gateway_tls)
    if node.id.kind is NodeKind.INGRESS:
        return _ingress(registry, node, parts)
    svc = registry.service(node.id.name)
    if svc is None:
        raise UnknownNode(f"node {node.id}: no MeshService {node.id.name}")
    if node.id.kind is NodeKind.PROXYLESS:
        return _proxyless(registry, node, svc, parts)
    return _sidecar(registry, node, svc, parts)


Clusters = list[e.cluster_pb2.Cluster]
Assignments = list[e.endpoint_pb2.ClusterLoadAssignment]
Listeners = tuple[e.listener_pb2.Listener, e.listener_pb2.Listener]


class _Fresh:
    """Every part translated anew (``build_snapshot`` without a memo)."""

    pack_cache: PackCache | None = None

    def __init__(self, tls: MeshTls | None = None, gateway_tls: GatewayTls | None = None) -> None:
        self.tls = tls
        """mTLS between sidecars (``translate.tls``); None: plaintext."""
        self.gateway_tls = gateway_tls
        """TLS on the ingress listener for outside clients; None: plaintext."""

    def service_parts(self, registry: Registry, svc: MeshService) -> tuple[Clusters, Assignments]:
        return service_clusters(svc, self.tls), _assignments(registry, svc)

    def sidecar_parts(
        self,
        node: ProxyNode,
        app_port: int,
        svc: MeshService,
        catalog: MethodCatalog,
        deadlines: tuple[InboundDeadline, ...] = (),
    ) -> tuple[e.cluster_pb2.Cluster, Listeners]:
        authorization = authorization_filter(svc, catalog, self.tls)
        inbound = inbound_listener(node, app_port, self.tls, svc.mtls, authorization, deadlines)
        listeners = (inbound, egress_listener(node))
        cluster = inbound_cluster(app_port, node.local_address, workers=_workers(svc))
        return cluster, listeners


_NodeKey = tuple[object, ...]


class SnapshotBuilder(_Fresh):
    """``build_snapshot`` with memory, for the publisher: the parts of a snapshot that depend
    on one service alone (its clusters and load assignments: its spec and endpoints) are
    translated and packed once and shared by every snapshot routing to it, in this rebuild and
    the next ones while the service is unchanged; the parts that depend on the node and its
    service's route deadlines (inbound cluster, listeners) are kept per node shape (the node
    without its replica) and deadlines.
    Messages are shared between snapshots, so they must never be mutated (as everywhere)."""

    MAX_NODE_SHAPES = 4096
    """Node shapes remembered; past it they are forgotten and translated again as needed."""

    def __init__(self, tls: MeshTls | None = None, gateway_tls: GatewayTls | None = None) -> None:
        self.tls = tls
        self.gateway_tls = gateway_tls
        self._packs = self.pack_cache = PackCache()
        self._services: dict[str, tuple[object, Clusters, Assignments]] = {}
        self._nodes: dict[_NodeKey, tuple[e.cluster_pb2.Cluster, Listeners]] = {}
        self._registry: Registry | None = None

    def __call__(self, registry: Registry, node: ProxyNode) -> Snapshot:
        if registry is not self._registry:
            self._registry = registry
            self._drop_services(set(self._services) - {s.name for s in registry.services})
        return build_snapshot(registry, node, self)

    def service_parts(self, registry: Registry, svc: MeshService) -> tuple[Clusters, Assignments]:
        key = (svc, registry.endpoints.get(svc.name, ()))
        known = self._services.get(svc.name)
        if known is not None and known[0] == key:
            return known[1], known[2]
        self._drop_services({svc.name})
        clusters, assignments = super().service_parts(registry, svc)
        self._packs.add([*clusters, *assignments])
        self._services[svc.name] = (key, clusters, assignments)
        return clusters, assignments

    def sidecar_parts(
        self,
        node: ProxyNode,
        app_port: int,
        svc: MeshService,
        catalog: MethodCatalog,
        deadlines: tuple[InboundDeadline, ...] = (),
    ) -> tuple[e.cluster_pb2.Cluster, Listeners]:
        rest = tuple(getattr(node, f.name) for f in fields(node) if f.name != "id")
        authorization = _authorization_key(svc, catalog)
        key: _NodeKey = (
            node.id.kind,
            node.id.name,
            rest,
            app_port,
            svc.mtls,
            authorization,
            deadlines,
            _workers(svc),
        )
        known = self._nodes.get(key)
        if known is not None:
            return known
        if len(self._nodes) >= self.MAX_NODE_SHAPES:
            self._drop_nodes()
        parts = self._nodes[key] = super().sidecar_parts(node, app_port, svc, catalog, deadlines)
        self._packs.add([parts[0], *parts[1]])
        return parts

    def _drop_services(self, names: set[str]) -> None:
        for name in names:
            known = self._services.pop(name, None)
            if known is not None:
                self._packs.forget([*known[1], *known[2]])

    def _drop_nodes(self) -> None:
        for cluster, listeners in self._nodes.values():
            self._packs.forget([cluster, *listeners])
        self._nodes.clear()


def _workers(svc: MeshService) -> int:
    """Processes serving each replica's app port (``spec.workload.workers``)."""
    return (svc.workload.workers or 1) if svc.workload is not None else 1


def _authorization_key(svc: MeshService, catalog: MethodCatalog) -> object:
    """What ``authorization_filter`` reads: the rules, the namespace, the services' methods."""
    if svc.authorization is None:
        return None
    methods = tuple(catalog.methods(service) for service in svc.grpc.services)
    return (svc.authorization, svc.namespace, svc.grpc.services, methods)


def _observability_clusters(node: ProxyNode) -> list[e.cluster_pb2.Cluster]:
    return [] if node.otlp_collector is None else [collector_cluster(node.otlp_collector)]


def _sidecar(registry: Registry, node: ProxyNode, svc: MeshService, parts: _Fresh) -> Snapshot:
    app_port = node.app_port or svc.grpc.port
    deadlines = inbound_deadlines(svc, registry)
    inbound, listeners = parts.sidecar_parts(node, app_port, svc, registry.catalog, deadlines)
    clusters = [inbound, *_observability_clusters(node)]
    endpoints = []
    for backend in registry.resolved_backends(svc):
        if backend.external is not None:
            clusters.append(external_cluster(backend, node.ca_bundle))
            continue
        target = registry.service(backend.name)
        if target is not None:  # always, for a resolved backend; narrows the type
            target_clusters, target_endpoints = parts.service_parts(registry, target)
            clusters += target_clusters
            endpoints += target_endpoints
    return Snapshot(
        node_id=str(node.id),
        clusters=tuple(clusters),
        endpoints=tuple(endpoints),
        listeners=listeners,
        routes=(egress_route_config(svc, registry),),
        pack_cache=parts.pack_cache,
    )


def _proxyless(registry: Registry, node: ProxyNode, svc: MeshService, parts: _Fresh) -> Snapshot:
    # The load assignments are the sidecars' (shared, packed once); gRPC reads the fields it
    # knows. Clusters and routes are gRPC's own subset, small enough to translate per group.
    backends = proxyless_backends(svc, registry)
    clusters = [proxyless_cluster(b, v) for b in backends for v in b.versions]
    endpoints = [a for b in backends for a in parts.service_parts(registry, b)[1]]
    routes = [proxyless_route_config(b, registry) for b in backends]
    external = sorted(b.name for b in registry.resolved_backends(svc) if b.external is not None)
    if external:
        cluster, assignment, external_routes = sidecar_egress(node, external)
        clusters.append(cluster)
        endpoints.append(assignment)
        routes += external_routes
    return Snapshot(
        node_id=str(node.id),
        clusters=tuple(clusters),
        endpoints=tuple(endpoints),
        listeners=tuple(proxyless_listener(r.name) for r in routes),
        routes=tuple(routes),
        pack_cache=parts.pack_cache,
    )


def _ingress(registry: Registry, node: ProxyNode, parts: _Fresh) -> Snapshot:
    # Only exposed services: the gateway holds no route, cluster or address of the rest.
    exposed = [parts.service_parts(registry, svc) for svc in registry.exposed_services()]
    clusters = [
        *(c for service_clusters_, _ in exposed for c in service_clusters_),
        *_observability_clusters(node),
    ]
    endpoints = [a for _, assignments in exposed for a in assignments]
    return Snapshot(
        node_id=str(node.id),
        clusters=tuple(clusters),
        endpoints=tuple(endpoints),
        listeners=(ingress_listener(node, parts.gateway_tls),),
        routes=(ingress_route_config(registry),),
        pack_cache=parts.pack_cache,
    )


def _assignments(
    registry: Registry, svc: MeshService
) -> list[e.endpoint_pb2.ClusterLoadAssignment]:
    by_version = {v.name: registry.endpoints_of(svc.name, v.name) for v in svc.versions}
    return [version_assignment(svc, v, by_version) for v in svc.versions]
