"""Type URLs, push order, and content-hash versioning of xDS resources (pure; the xDS cache
and streams in ``grpcmesh_control.mesh.xds`` serve what this packs).

The one definition of each: ``translate.Snapshot`` versions its resources with
``pack_resources`` when it is built, so every resource is serialized and hashed once per
rebuild, and the cache serves those very bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from google.protobuf import any_pb2
from google.protobuf.message import Message

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "PUSH_ORDER",
    "ROUTE",
    "SECRET",
    "WILDCARD_TYPES",
    "PackCache",
    "ResourceType",
    "TypeResources",
    "VersionedSnapshot",
    "merge_resources",
    "pack_resources",
    "resource_name",
    "version_snapshot",
]

_PREFIX = "type.googleapis.com/"


class ResourceType(StrEnum):
    """xDS type URLs of the resources a snapshot holds."""

    CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
    ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
    LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
    ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"


CLUSTER = ResourceType.CLUSTER
ENDPOINT = ResourceType.ENDPOINT
LISTENER = ResourceType.LISTENER
ROUTE = ResourceType.ROUTE

PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
"""Make-before-break: clusters before the endpoints that fill them, listeners before the
routes they name, and clusters before listeners whose routes point at them."""

SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
"""SDS: per node (a workload's certificate and its trusted roots), never in a group's shared
snapshot; the xDS cache layers them onto the node's view (``SnapshotCache.set_node_secrets``).
Envoy asks for them by name once a cluster or listener names them; they go out after the
group's types."""

WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
"""Types Envoy subscribes to as a whole; EDS and RDS are requested by name."""


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def resource_name(resource: Message) -> str:
    """The xDS resource name: ``cluster_name`` for load assignments, ``name`` otherwise."""
    if resource.DESCRIPTOR.full_name == "envoy.config.endpoint.v3.ClusterLoadAssignment":
        return str(getattr(resource, "cluster_name"))  # noqa: B009 - messages are untyped
    return str(getattr(resource, "name"))  # noqa: B009


@dataclass(frozen=True)
class TypeResources:
    """All resources of one type for one node, with a version for the set and for each one."""

    version: str
    resources: Mapping[str, any_pb2.Any]
    resource_versions: Mapping[str, str]


@dataclass(frozen=True)
class VersionedSnapshot:
    """What one node should hold. ``version`` changes iff any resource changes."""

    version: str
    by_type: Mapping[str, TypeResources]

    @classmethod
    def from_types(cls, by_type: Mapping[str, TypeResources]) -> VersionedSnapshot:
        """The snapshot of these types, its version derived from theirs."""
        ordered = {t: by_type[t] for t in sorted(by_type)}
        overall = _hash("".join(f"{t}={r.version};" for t, r in ordered.items()).encode())
        return cls(version=overall, by_type=ordered)

    def of(self, type_url: str) -> TypeResources:
        return self.by_type.get(type_url) or _EMPTY


_EMPTY = TypeResources(version=_hash(b""), resources={}, resource_versions={})


def _pack(message: Message) -> tuple[any_pb2.Any, str]:
    blob = message.SerializeToString(deterministic=True)
    return any_pb2.Any(type_url=_PREFIX + message.DESCRIPTOR.full_name, value=blob), _hash(blob)


class PackCache:
    """Packed forms (``Any`` and content version) of messages that many snapshots share, by
    identity: a message translated once (a backend's clusters, say) is serialized and hashed
    once, not once per snapshot holding it. An entry holds its message, so the identity is
    not reused while cached; whoever adds messages forgets them when it drops them."""

    def __init__(self) -> None:
        self._packed: dict[int, tuple[Message, any_pb2.Any, str]] = {}

    def __len__(self) -> int:
        return len(self._packed)

    def add(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self._packed[id(message)] = (message, *_pack(message))

    def forget(self, messages: Iterable[Message]) -> None:
        for message in messages:
            entry = self._packed.get(id(message))
            if entry is not None and entry[0] is message:
                del self._packed[id(message)]

    def get(self, message: Message) -> tuple[any_pb2.Any, str] | None:
        entry = self._packed.get(id(message))
        return None if entry is None or entry[0] is not message else (entry[1], entry[2])


def pack_resources(
    type_url: str, resources: Iterable[Message], cache: PackCache | None = None
) -> TypeResources:
    """Pack and version resources of one type by content: each is serialized and hashed once
    (or taken from ``cache``), the set's version covers every (name, version) pair, in name
    order."""
    packed: dict[str, any_pb2.Any] = {}
    versions: dict[str, str] = {}
    for message in sorted(resources, key=resource_name):
        name = resource_name(message)
        known = None if cache is None else cache.get(message)
        any_message, version = known if known is not None else _pack(message)
        if any_message.type_url != type_url:
            raise ValueError(f"{name}: a {any_message.type_url} filed under {type_url}")
        packed[name] = any_message
        versions[name] = version
    digest = _hash("".join(f"{n}={v};" for n, v in versions.items()).encode())
    return TypeResources(digest, packed, versions)


def merge_resources(parts: Iterable[TypeResources]) -> TypeResources:
    """One type's resources from several sets (a node's secrets from several sources), versioned
    as ``pack_resources`` would version them together. A name in two sets is an error."""
    packed: dict[str, any_pb2.Any] = {}
    versions: dict[str, str] = {}
    for part in parts:
        for name, resource in part.resources.items():
            if name in packed:
                raise ValueError(f"resource {name!r} comes from two sources")
            packed[name] = resource
            versions[name] = part.resource_versions[name]
    ordered = {name: versions[name] for name in sorted(versions)}
    digest = _hash("".join(f"{n}={v};" for n, v in ordered.items()).encode())
    return TypeResources(digest, {name: packed[name] for name in ordered}, ordered)


def version_snapshot(resources: Mapping[str, Mapping[str, Message]]) -> VersionedSnapshot:
    """Pack and version resources by content: the same input always gives the same versions."""
    return VersionedSnapshot.from_types(
        {
            type_url: pack_resources(type_url, by_name.values())
            for type_url, by_name in resources.items()
        }
    )
