"""xDS serving: a versioned snapshot cache and the ADS transport (state of the world + delta).

The seam follows go-control-plane: the cache holds versions and never sees streams; the server
handles streams and never computes versions.
"""

from grpcmesh_control.xds.cache import NackRecord, NodeStatus, SnapshotCache
from grpcmesh_control.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    TypeResources,
    VersionedSnapshot,
    pack_snapshot,
    version_snapshot,
)
from grpcmesh_control.xds.server import AdsServicer

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "PUSH_ORDER",
    "ROUTE",
    "AdsServicer",
    "NackRecord",
    "NodeStatus",
    "SnapshotCache",
    "TypeResources",
    "VersionedSnapshot",
    "pack_snapshot",
    "version_snapshot",
]
