"""The mesh root at the edge: read the CA Secret, or create it once.

Every replica calls ``ensure_mesh_ca`` at start and they agree through the API server, as for
the webhook Secret: the first create wins, a racing create gets 409 and reads the winner's.
The operator never rewrites the Secret: a root rotation is a deliberate operation
(docs/security.md), and the Secret may hold a user's own intermediate.
"""

from __future__ import annotations

import datetime as dt
import logging

from grpcmesh_control.cluster.controller.client import ApiError, Conflict, KubeClient
from grpcmesh_control.cluster.objects.kinds import SECRET
from grpcmesh_control.cluster.objects.mesh_ca import mesh_ca_from_secret, mesh_ca_secret
from grpcmesh_control.mesh.ca import CertificateAuthority

__all__ = ["ensure_mesh_ca"]

log = logging.getLogger(__name__)

_ATTEMPTS = 3  # a lost create race costs one more read


async def ensure_mesh_ca(
    client: KubeClient, *, namespace: str, secret: str, now: dt.datetime
) -> CertificateAuthority:
    """The CA in Secret ``namespace/secret``, creating a self-signed root there if there is
    none. ``CaError`` when the Secret exists but cannot serve (named key, reason)."""
    for _ in range(_ATTEMPTS):
        stored = await client.get(SECRET, namespace, secret)
        if stored is not None:
            return mesh_ca_from_secret(stored)
        root = CertificateAuthority.create_root(now)
        try:
            await client.create(SECRET, mesh_ca_secret(root, secret, namespace))
        except Conflict:
            continue  # another replica created it first: read theirs
        log.info("mesh root CA created in secret %s/%s", namespace, secret)
        return root
    raise ApiError(409, f"secret {namespace}/{secret} kept appearing and vanishing")
