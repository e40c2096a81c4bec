"""xDS serving: a versioned snapshot cache and the ADS transport (state of the world + delta).

The seam follows go-control-plane: the cache holds versions and never sees streams; the server
handles streams and never computes versions.
"""

from grpcmesh_control.mesh.translate.versioned import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SECRET,
    WILDCARD_TYPES,
    ResourceType,
    TypeResources,
    VersionedSnapshot,
    pack_resources,
    version_snapshot,
)
from grpcmesh_control.mesh.xds.cache import NackRecord, NodeStatus, SnapshotCache
from grpcmesh_control.mesh.xds.server import AdsServicer, NodeAuthenticator, Refusal

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "PUSH_ORDER",
    "ROUTE",
    "SECRET",
    "WILDCARD_TYPES",
    "AdsServicer",
    "NackRecord",
    "NodeAuthenticator",
    "NodeStatus",
    "Refusal",
    "ResourceType",
    "SnapshotCache",
    "TypeResources",
    "VersionedSnapshot",
    "pack_resources",
    "version_snapshot",
]
