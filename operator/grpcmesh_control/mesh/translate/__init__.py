"""Pure translation: MeshServices + endpoints + method catalog -> Registry -> per-node Snapshot of
Envoy v3 resources. No I/O; imports neither kopf nor grpc. Naming conventions: ``naming``."""

from grpcmesh_control.mesh.errors import InconsistentSnapshot, InvalidNodeId, UnknownNode
from grpcmesh_control.mesh.translate.build import SnapshotBuilder, build_snapshot
from grpcmesh_control.mesh.translate.naming import (
    NodeId,
    NodeKind,
    ProxyNode,
    external_cluster_name,
    inbound_cluster_name,
    node_group,
    version_cluster_name,
)
from grpcmesh_control.mesh.translate.policy import EffectiveRetry, RoutePolicy, route_policies
from grpcmesh_control.mesh.translate.registry import Problem, Registry
from grpcmesh_control.mesh.translate.snapshot import (
    PUSH_ORDER,
    ResourceType,
    Snapshot,
    check_consistency,
    resource_name,
)
from grpcmesh_control.mesh.translate.static import static_bootstrap
from grpcmesh_control.mesh.translate.tls import (
    GatewayTls,
    MeshTls,
    gateway_secrets,
    workload_secrets,
)

__all__ = [
    "PUSH_ORDER",
    "EffectiveRetry",
    "GatewayTls",
    "InconsistentSnapshot",
    "InvalidNodeId",
    "MeshTls",
    "NodeId",
    "NodeKind",
    "Problem",
    "ProxyNode",
    "Registry",
    "ResourceType",
    "RoutePolicy",
    "Snapshot",
    "SnapshotBuilder",
    "UnknownNode",
    "build_snapshot",
    "check_consistency",
    "external_cluster_name",
    "gateway_secrets",
    "inbound_cluster_name",
    "node_group",
    "resource_name",
    "route_policies",
    "static_bootstrap",
    "version_cluster_name",
    "workload_secrets",
]
