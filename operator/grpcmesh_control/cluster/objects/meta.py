"""Object metadata: the owner reference every rendered object carries, and the common shape."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grpcmesh_control.cluster.objects.kinds import Kind
from grpcmesh_control.mesh.model.schema import API_VERSION, KIND

__all__ = ["OwnerRef", "object_metadata", "tls_secret"]


@dataclass(frozen=True)
class OwnerRef:
    """The MeshService that owns the rendered objects: deleting it deletes them (garbage
    collection, no finalizer needed, so deletes work even while the operator is down)."""

    name: str
    uid: str
    api_version: str = API_VERSION
    kind: str = KIND

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> OwnerRef:
        """From a MeshService body as the API returns it (``metadata.uid`` set)."""
        metadata = body["metadata"]
        return cls(name=str(metadata["name"]), uid=str(metadata["uid"]))

    def to_dict(self) -> dict[str, Any]:
        # controller: the one owner that reconciles it; blockOwnerDeletion: foreground deletes
        # of the MeshService wait for its objects.
        return {
            "apiVersion": self.api_version,
            "blockOwnerDeletion": True,
            "controller": True,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
        }


def object_metadata(
    kind: Kind,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    owner: OwnerRef | None,
) -> dict[str, Any]:
    """``apiVersion``/``kind``/``metadata`` of a new object. Cluster-scoped kinds get neither a
    namespace nor an owner (a namespaced owner cannot own them)."""
    metadata: dict[str, Any] = {"name": name}
    if kind.namespaced:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(sorted(labels.items()))
    if owner is not None and kind.namespaced:
        metadata["ownerReferences"] = [owner.to_dict()]
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata}


def tls_secret(name: str, namespace: str, data: Mapping[str, bytes]) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret of the operator's own (not owned by a MeshService)
    holding ``data`` (raw bytes, base64-encoded here)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "grpcmesh"},
        },
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }
