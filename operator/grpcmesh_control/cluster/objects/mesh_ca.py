"""The mesh root in a cluster: one ``kubernetes.io/tls`` Secret in the operator's namespace.

Layout: ``tls.crt`` (the signing certificate, then any intermediates above it), ``tls.key``
(its ECDSA key) and ``ca.crt`` (the root peers trust). That is what cert-manager writes for a
``Certificate`` with ``isCA: true``, so a platform that runs its own PKI can have its issuer
put an intermediate there instead of letting the operator create a self-signed root
(docs/security.md, "Bring your own CA").

Pure: the Secret body for a CA, and the CA a Secret holds.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from grpcmesh_control.cluster.objects.meta import tls_secret
from grpcmesh_control.mesh.ca import CaError, CertificateAuthority

__all__ = ["ROOT_CERT", "SIGNER_CERT", "SIGNER_KEY", "mesh_ca_from_secret", "mesh_ca_secret"]

SIGNER_CERT, SIGNER_KEY, ROOT_CERT = "tls.crt", "tls.key", "ca.crt"


def mesh_ca_secret(ca: CertificateAuthority, name: str, namespace: str) -> dict[str, Any]:
    """The Secret holding ``ca``, created once and never rewritten by the operator."""
    cert, key, root = ca.pem()
    return tls_secret(name, namespace, {SIGNER_CERT: cert, SIGNER_KEY: key, ROOT_CERT: root})


def mesh_ca_from_secret(secret: Mapping[str, Any]) -> CertificateAuthority:
    """The CA an existing Secret holds. ``CaError`` naming the Secret and the key when it
    cannot serve: the operator never overwrites it (it may be the user's own intermediate),
    so a broken one must be fixed by whoever wrote it."""
    metadata = secret.get("metadata") or {}
    where = f"Secret {metadata.get('namespace')}/{metadata.get('name')}"
    data = secret.get("data") or {}
    decoded: dict[str, bytes] = {}
    for key in (SIGNER_CERT, SIGNER_KEY):
        if key not in data:
            raise CaError(f"{where}: data.{key} is missing")
    for key in (SIGNER_CERT, SIGNER_KEY, ROOT_CERT):
        try:
            decoded[key] = base64.b64decode(data.get(key) or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CaError(f"{where}: data.{key} is not base64: {exc}") from exc
    try:
        return CertificateAuthority.from_pem(
            decoded[SIGNER_CERT], decoded[SIGNER_KEY], decoded[ROOT_CERT]
        )
    except CaError as exc:
        raise CaError(f"{where}: {exc}") from exc
