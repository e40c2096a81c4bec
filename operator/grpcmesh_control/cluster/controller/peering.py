"""Is this replica the active one? kopf pauses its own watches when a peer outranks it, but
does not expose that state; the operator's own writers (periodic resync, status follower)
must pause too, so they read kopf's peering object and apply kopf's rule themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from grpcmesh_control.cluster.objects import Kind

__all__ = ["CLUSTER_PEERING", "peering_active"]

CLUSTER_PEERING = Kind(
    "kopf.dev", "v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False
)


def peering_active(peers: Mapping[str, Any], priority: int, now: datetime) -> bool:
    """kopf's rule from the peering object's ``status`` (identity -> priority, lifetime,
    lastseen): a replica handles events only while no other live peer has its priority or a
    higher one. Its own record is the live one at ``priority``, so: exactly one live record
    at ``priority`` or above, and at ``priority``. No record of its own yet (starting): not
    active."""
    outranking = []
    for record in peers.values():
        if not isinstance(record, Mapping):
            continue  # kopf deletes a record by patching it to null
        try:
            seen = datetime.fromisoformat(str(record["lastseen"]))
            alive = seen + timedelta(seconds=int(record.get("lifetime", 60))) > now
            rank = int(record.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue
        if alive and rank >= priority:
            outranking.append(rank)
    return outranking == [priority]
