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

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from google.protobuf import message

from grpcmesh_control.errors import InconsistentSnapshot
from grpcmesh_control.translate import _envoy as e
from grpcmesh_control.translate.listeners import HCM_FILTER

__all__ = ["PUSH_ORDER", "ResourceType", "Snapshot", "check_consistency", "resource_name"]

Cluster = e.cluster_pb2.Cluster
HCM = e.http_connection_manager_pb2.HttpConnectionManager
_VERSION_CHARS = 16


class ResourceType(StrEnum):
    """xDS type URLs of the resources a snapshot holds."""

    CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
    ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


# The order an xDS server must push in so nothing is referenced before it exists.
PUSH_ORDER = (
    ResourceType.CLUSTER,
    ResourceType.ENDPOINT,
    ResourceType.LISTENER,
    ResourceType.ROUTE,
)


def resource_name(resource: message.Message) -> str:
    """The xDS resource name: ``cluster_name`` for load assignments, ``name`` otherwise."""
    if isinstance(resource, e.endpoint_pb2.ClusterLoadAssignment):
        return str(resource.cluster_name)
    return str(getattr(resource, "name"))  # noqa: B009 - messages are untyped (no stubs)


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

    def __post_init__(self) -> None:
        for attr in ("clusters", "endpoints", "listeners", "routes"):
            object.__setattr__(self, attr, tuple(sorted(getattr(self, attr), key=resource_name)))
        problems = check_consistency(self.clusters, self.endpoints, self.listeners, self.routes)
        if problems:
            raise InconsistentSnapshot(self.node_id, problems)
        versions = {t: _content_hash(t, self.resources(t).values()) for t in PUSH_ORDER}
        object.__setattr__(self, "versions", MappingProxyType(versions))
        overall = hashlib.sha256("".join(versions[t] for t in PUSH_ORDER).encode())
        object.__setattr__(self, "version", overall.hexdigest()[:_VERSION_CHARS])

    def resources(self, type_url: str) -> Mapping[str, message.Message]:
        """Resources of one type by name, in name order."""
        by_type: dict[str, Sequence[message.Message]] = {
            ResourceType.CLUSTER: self.clusters,
            ResourceType.ENDPOINT: self.endpoints,
            ResourceType.LISTENER: self.listeners,
            ResourceType.ROUTE: self.routes,
        }
        return MappingProxyType({resource_name(r): r for r in by_type[type_url]})

    def by_type(self) -> Mapping[str, Mapping[str, message.Message]]:
        """Every resource by type URL, then name (the shape the xDS cache takes)."""
        return MappingProxyType({t.value: self.resources(t) for t in PUSH_ORDER})


def _content_hash(type_url: str, resources: Iterable[message.Message]) -> str:
    digest = hashlib.sha256(type_url.encode())
    for resource in resources:
        payload = resource.SerializeToString(deterministic=True)
        name = resource_name(resource).encode()
        # Length-prefixed, so (name, bytes) boundaries cannot be shifted into a collision.
        for part in (name, payload):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()[:_VERSION_CHARS]


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
    cluster_names = {c.name for c in clusters}
    for config in [*routes, *inline]:
        for target in sorted(set(_route_targets(config)) - cluster_names):
            problems.append(
                f"route configuration {config.name!r} targets missing cluster {target!r}"
            )

    bound = Counter(
        (lst.address.socket_address.address, lst.address.socket_address.port_value)
        for lst in listeners
    )
    for (address, port), count in sorted(bound.items()):
        if count > 1:
            problems.append(f"{count} listeners bind {address}:{port}")
    return problems


def _managers(
    listener: e.listener_pb2.Listener,
) -> Iterator[e.http_connection_manager_pb2.HttpConnectionManager]:
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
