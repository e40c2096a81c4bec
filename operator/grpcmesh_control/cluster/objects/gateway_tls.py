"""The gateway's certificate for outside clients in a cluster: one ``kubernetes.io/tls`` Secret
in the operator's namespace (the chart's ``gateway.tls.secretName``), written by the user or
their issuer (cert-manager), read by the operator only.

Layout: ``tls.crt`` (the chain, leaf first), ``tls.key``, and ``ca.crt`` (the CAs client
certificates must chain to; needed only when client certificates are required).

Pure: the checked certificate a Secret holds.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from grpcmesh_control.mesh.gateway_certificate import GatewayCertificate, GatewayTlsError

__all__ = ["CLIENT_CA", "SERVER_CERT", "SERVER_KEY", "gateway_certificate_from_secret"]

SERVER_CERT, SERVER_KEY, CLIENT_CA = "tls.crt", "tls.key", "ca.crt"


def gateway_certificate_from_secret(
    secret: Mapping[str, Any], *, require_client_certificate: bool = False
) -> GatewayCertificate:
    """The certificate ``secret`` holds. ``GatewayTlsError`` naming the Secret and key when a
    key is missing or not base64, the pair does not check out, or client certificates are
    required and there is no ``ca.crt``."""
    metadata = secret.get("metadata") or {}
    where = f"Secret {metadata.get('namespace')}/{metadata.get('name')}"
    data = secret.get("data") or {}
    wanted = (SERVER_CERT, SERVER_KEY, *((CLIENT_CA,) if require_client_certificate else ()))
    decoded: dict[str, bytes] = {}
    for key in wanted:
        if not data.get(key):
            why = " (client certificates are required)" if key == CLIENT_CA else ""
            raise GatewayTlsError(f"{where}: data.{key} is missing{why}")
        try:
            decoded[key] = base64.b64decode(data[key], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise GatewayTlsError(f"{where}: data.{key} is not base64: {exc}") from None
    names = tuple(f"{where}: data.{key}" for key in (SERVER_CERT, SERVER_KEY, CLIENT_CA))
    return GatewayCertificate.from_pem(
        decoded[SERVER_CERT], decoded[SERVER_KEY], decoded.get(CLIENT_CA), names=names
    )
