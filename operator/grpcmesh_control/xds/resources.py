"""Type URLs, push order, and content-hash versioning of xDS resources (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import any_pb2
from google.protobuf.message import Message

_PREFIX = "type.googleapis.com/"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"

PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
"""Make-before-break: clusters before the endpoints that fill them, listeners before the
routes they name, and clusters before listeners whose routes point at them."""

WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
"""Types Envoy subscribes to as a whole; EDS and RDS are requested by name."""


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


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

    def of(self, type_url: str) -> TypeResources:
        return self.by_type.get(type_url) or _EMPTY


_EMPTY = TypeResources(version=_hash(b""), resources={}, resource_versions={})


class ContentVersioned(Protocol):
    """A snapshot that already carries content versions (translate.Snapshot does)."""

    @property
    def version(self) -> str: ...

    @property
    def versions(self) -> Mapping[str, str]: ...

    def by_type(self) -> Mapping[str, Mapping[str, Message]]: ...


def pack_snapshot(snapshot: ContentVersioned) -> VersionedSnapshot:
    """Keep the snapshot's own versions (so status reports the version translate computed)
    and add the per-resource versions delta xDS needs."""
    packed = version_snapshot(snapshot.by_type())
    by_type = {
        type_url: TypeResources(
            snapshot.versions.get(type_url, typed.version), typed.resources, typed.resource_versions
        )
        for type_url, typed in packed.by_type.items()
    }
    return VersionedSnapshot(version=snapshot.version, by_type=by_type)


def version_snapshot(resources: Mapping[str, Mapping[str, Message]]) -> VersionedSnapshot:
    """Pack and version resources by content: the same input always gives the same versions."""
    by_type: dict[str, TypeResources] = {}
    for type_url in sorted(resources):
        packed: dict[str, any_pb2.Any] = {}
        versions: dict[str, str] = {}
        for name in sorted(resources[type_url]):
            message = resources[type_url][name]
            blob = message.SerializeToString(deterministic=True)
            any_message = any_pb2.Any(type_url=_PREFIX + message.DESCRIPTOR.full_name, value=blob)
            if any_message.type_url != type_url:
                raise ValueError(f"{name}: a {any_message.type_url} filed under {type_url}")
            packed[name] = any_message
            versions[name] = _hash(blob)
        digest = _hash("".join(f"{n}={v};" for n, v in versions.items()).encode())
        by_type[type_url] = TypeResources(digest, packed, versions)
    overall = _hash("".join(f"{t}={r.version};" for t, r in by_type.items()).encode())
    return VersionedSnapshot(version=overall, by_type=by_type)
