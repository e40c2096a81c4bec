"""Snapshots: the complete, consistent xDS state of one node, versioned by content.

A ``Snapshot`` checks itself when created and refuses to exist if inconsistent, so whatever
holds one (the xDS cache) can publish it without checking again. The rules (one test each):

1. Resource names are unique per type.
2. Every EDS cluster has a load assignment (even an empty one), else Envoy warms it forever.
3. Every load assignment belongs to an EDS cluster.
4. Every RDS name a listener references exists.
5. Every route configuration is referenced by a listener.
6. Every cluster a route targets exists.
7. No two listeners bind the same address and port.

Versions are content hashes over deterministic serializations: equal content, equal version,
on any machine and in any process; resource order does not matter. ``versions`` holds one per
type (an EDS-only change leaves the CDS/LDS/RDS versions alone); ``version`` covers all four.
Treat the messages as frozen: mutating one after creation would make the version lie.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import message

from grpcmesh_control.mesh.errors import InconsistentSnapshot
from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.bootstrap import XDS_CLUSTER
from grpcmesh_control.mesh.translate.listeners import HCM_FILTER
from grpcmesh_control.mesh.translate.versioned import (
    PUSH_ORDER,
    PackCache,
    ResourceType,
    VersionedSnapshot,
    pack_resources,
    resource_name,
)

__all__ = ["PUSH_ORDER", "ResourceType", "Snapshot", "check_consistency", "resource_name"]

Cluster = e.cluster_pb2.Cluster
HCM = e.http_connection_manager_pb2.HttpConnectionManager


_FIELDS = {
    ResourceType.CLUSTER: "clusters",
    ResourceType.ENDPOINT: "endpoints",
    ResourceType.LISTENER: "listeners",
    ResourceType.ROUTE: "routes",
}


@dataclass(frozen=True)
class Snapshot:
    """One node's resources, sorted by name; construction raises ``InconsistentSnapshot``."""

    node_id: str
    clusters: tuple[e.cluster_pb2.Cluster, ...] = ()
    endpoints: tuple[e.endpoint_pb2.ClusterLoadAssignment, ...] = ()
    listeners: tuple[e.listener_pb2.Listener, ...] = ()
    routes: tuple[e.route_pb2.RouteConfiguration, ...] = ()
    versions: Mapping[str, str] = field(init=False, compare=False)
    version: str = field(init=False)
    packed: VersionedSnapshot = field(init=False, compare=False, repr=False)
    """The resources packed and versioned for the xDS cache (serialized and hashed once)."""
    pack_cache: PackCache | None = field(default=None, compare=False, repr=False)
    """Where resources shared with other snapshots are already packed (``SnapshotBuilder``)."""

    def __post_init__(self) -> None:
        for attr in _FIELDS.values():
            object.__setattr__(self, attr, tuple(sorted(getattr(self, attr), key=resource_name)))
        problems = check_consistency(self.clusters, self.endpoints, self.listeners, self.routes)
        if problems:
            raise InconsistentSnapshot(self.node_id, problems)
        packed = VersionedSnapshot.from_types(
            {
                t.value: pack_resources(t, getattr(self, _FIELDS[t]), self.pack_cache)
                for t in PUSH_ORDER
            }
        )
        object.__setattr__(self, "packed", packed)
        versions = {t: packed.of(t).version for t in PUSH_ORDER}
        object.__setattr__(self, "versions", MappingProxyType(versions))
        object.__setattr__(self, "version", packed.version)

    def resources(self, type_url: str) -> Mapping[str, message.Message]:
        """Resources of one type by name, in name order."""
        of_type: Sequence[message.Message] = getattr(self, _FIELDS[ResourceType(type_url)])
        return MappingProxyType({resource_name(r): r for r in of_type})

    def by_type(self) -> Mapping[str, Mapping[str, message.Message]]:
        """Every resource by type URL, then name (the shape the xDS cache takes)."""
        return MappingProxyType({t.value: self.resources(t) for t in PUSH_ORDER})


def check_consistency(
    clusters: Sequence[e.cluster_pb2.Cluster],
    endpoints: Sequence[e.endpoint_pb2.ClusterLoadAssignment],
    listeners: Sequence[e.listener_pb2.Listener],
    routes: Sequence[e.route_pb2.RouteConfiguration],
) -> list[str]:
    """Every rule the snapshot breaks, as messages; empty when consistent."""
    problems: list[str] = []
    for kind, items in (
        ("cluster", clusters),
        ("load assignment", endpoints),
        ("listener", listeners),
        ("route configuration", routes),
    ):
        for name, count in sorted(Counter(resource_name(r) for r in items).items()):
            if count > 1:
                problems.append(f"{kind} {name!r} appears {count} times")

    eds_names = {
        c.eds_cluster_config.service_name or c.name
        for c in clusters
        if c.type == Cluster.DiscoveryType.EDS
    }
    assigned = {a.cluster_name for a in endpoints}
    problems += [f"EDS cluster {n!r} has no load assignment" for n in sorted(eds_names - assigned)]
    problems += [f"load assignment {n!r} has no EDS cluster" for n in sorted(assigned - eds_names)]

    managers = [(listener.name, hcm) for listener in listeners for hcm in _managers(listener)]
    rds_names = {hcm.rds.route_config_name for _, hcm in managers if hcm.HasField("rds")}
    route_names = {r.name for r in routes}
    for listener_name, hcm in managers:
        if hcm.HasField("rds") and hcm.rds.route_config_name not in route_names:
            problems.append(
                f"listener {listener_name!r} references missing route configuration "
                f"{hcm.rds.route_config_name!r}"
            )
    problems += [
        f"route configuration {n!r} is not referenced by any listener"
        for n in sorted(route_names - rds_names)
    ]

    inline = [hcm.route_config for _, hcm in managers if hcm.HasField("route_config")]
    # The xDS cluster is static in every node's bootstrap (the ingress routes reflection to it).
    cluster_names = {c.name for c in clusters} | {XDS_CLUSTER}
    for config in [*routes, *inline]:
        for target in sorted(set(_route_targets(config)) - cluster_names):
            problems.append(
                f"route configuration {config.name!r} targets missing cluster {target!r}"
            )

    bound = Counter(
        (lst.address.socket_address.address, lst.address.socket_address.port_value)
        for lst in listeners
        if lst.HasField("address")  # an API listener (a proxyless client's) binds nothing
    )
    for (address, port), count in sorted(bound.items()):
        if count > 1:
            problems.append(f"{count} listeners bind {address}:{port}")
    return problems


def _managers(
    listener: e.listener_pb2.Listener,
) -> Iterator[e.http_connection_manager_pb2.HttpConnectionManager]:
    if listener.HasField("api_listener"):
        packed = listener.api_listener.api_listener
        if packed.Is(HCM.DESCRIPTOR):
            hcm = HCM()
            packed.Unpack(hcm)
            yield hcm
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            if network_filter.name == HCM_FILTER and network_filter.typed_config.Is(HCM.DESCRIPTOR):
                hcm = HCM()
                network_filter.typed_config.Unpack(hcm)
                yield hcm


def _route_targets(config: e.route_pb2.RouteConfiguration) -> Iterator[str]:
    for host in config.virtual_hosts:
        for route in host.routes:
            if not route.HasField("route"):
                continue
            if route.route.cluster:
                yield route.route.cluster
            for weighted in route.route.weighted_clusters.clusters:
                yield weighted.name
