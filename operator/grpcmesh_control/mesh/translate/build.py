"""Registry + node -> Snapshot: the one entry point of translation (a pure function).

Sidecar ``sidecar~<svc>~<replica>``: listener ``inbound`` (to its app) and ``egress`` (RDS
``egress``: a virtual host per backend of ``<svc>``), cluster ``inbound|<app port>``, an EDS
cluster and load assignment per version of each MeshService backend, a DNS cluster per external
backend. Ingress: listener ``ingress`` (RDS ``ingress``: every exposed service by gRPC path),
an EDS cluster and load assignment per version of every exposed service (``spec.expose``).
"""

from __future__ import annotations

from grpcmesh_control.mesh.errors import UnknownNode
from grpcmesh_control.mesh.model.mesh import MeshService
from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.clusters import (
    collector_cluster,
    external_cluster,
    inbound_cluster,
    load_assignment,
    service_clusters,
)
from grpcmesh_control.mesh.translate.listeners import (
    egress_listener,
    inbound_listener,
    ingress_listener,
)
from grpcmesh_control.mesh.translate.naming import NodeKind, ProxyNode, version_cluster_name
from grpcmesh_control.mesh.translate.registry import Registry
from grpcmesh_control.mesh.translate.routes import egress_route_config, ingress_route_config
from grpcmesh_control.mesh.translate.snapshot import Snapshot

__all__ = ["build_snapshot"]


def build_snapshot(registry: Registry, node: ProxyNode) -> Snapshot:
    """The node's complete configuration. Raises ``UnknownNode`` for a sidecar whose service
    the registry does not know: it gets nothing (and stays not ready) until the service exists."""
    if node.id.kind is NodeKind.INGRESS:
        return _ingress(registry, node)
    svc = registry.service(node.id.name)
    if svc is None:
        raise UnknownNode(f"node {node.id}: no MeshService {node.id.name}")
    return _sidecar(registry, node, svc)


def _observability_clusters(node: ProxyNode) -> list[e.cluster_pb2.Cluster]:
    return [] if node.otlp_collector is None else [collector_cluster(node.otlp_collector)]


def _sidecar(registry: Registry, node: ProxyNode, svc: MeshService) -> Snapshot:
    app_port = node.app_port or svc.grpc.port
    clusters = [inbound_cluster(app_port, node.local_address), *_observability_clusters(node)]
    endpoints = []
    for backend in registry.resolved_backends(svc):
        if backend.external is not None:
            clusters.append(external_cluster(backend, node.ca_bundle))
            continue
        target = registry.service(backend.name)
        if target is not None:  # always, for a resolved backend; narrows the type
            clusters += service_clusters(target)
            endpoints += _assignments(registry, target)
    return Snapshot(
        node_id=str(node.id),
        clusters=tuple(clusters),
        endpoints=tuple(endpoints),
        listeners=(inbound_listener(node, app_port), egress_listener(node)),
        routes=(egress_route_config(svc, registry),),
    )


def _ingress(registry: Registry, node: ProxyNode) -> Snapshot:
    # Only exposed services: the gateway holds no route, cluster or address of the rest.
    exposed = registry.exposed_services()
    clusters = [
        *(c for svc in exposed for c in service_clusters(svc)),
        *_observability_clusters(node),
    ]
    endpoints = [a for svc in exposed for a in _assignments(registry, svc)]
    return Snapshot(
        node_id=str(node.id),
        clusters=tuple(clusters),
        endpoints=tuple(endpoints),
        listeners=(ingress_listener(node),),
        routes=(ingress_route_config(registry),),
    )


def _assignments(
    registry: Registry, svc: MeshService
) -> list[e.endpoint_pb2.ClusterLoadAssignment]:
    return [
        load_assignment(
            version_cluster_name(svc.name, v.name), registry.endpoints_of(svc.name, v.name)
        )
        for v in svc.versions
    ]
