"""The ingress gateway's server certificate for outside clients, checked (pure: no sockets).

Each mode reads the PEM bytes (files locally, a ``kubernetes.io/tls`` Secret in a cluster);
``GatewayCertificate.from_pem`` checks them: a chain that parses, a key that matches its leaf,
client CAs that parse when client certificates are required. ``mesh.gateway_tls`` serves
them to the gateways.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from grpcmesh_control.mesh.errors import MeshError
from grpcmesh_control.mesh.translate import GatewayTls

__all__ = ["GatewayCertificate", "GatewayTlsError"]


class GatewayTlsError(MeshError, ValueError):
    """The configured gateway certificate cannot serve; the message names what and why."""


@dataclass(frozen=True)
class GatewayCertificate:
    """A checked server certificate chain (leaf first), its key, and the CAs client
    certificates must chain to (None: none are asked for)."""

    chain_pem: bytes
    key_pem: bytes
    client_roots_pem: bytes | None = None
    not_after: dt.datetime | None = None
    """The leaf's expiry (for logs and status)."""

    @property
    def tls(self) -> GatewayTls:
        """The listener settings this certificate serves."""
        return GatewayTls(require_client_certificate=self.client_roots_pem is not None)

    @classmethod
    def from_pem(
        cls,
        chain_pem: bytes,
        key_pem: bytes,
        client_roots_pem: bytes | None = None,
        *,
        names: Sequence[str] = ("certificate", "key", "client CA"),
    ) -> GatewayCertificate:
        """Checked: ``GatewayTlsError`` naming the part (``names``: how the caller calls
        them, file paths or Secret keys) when the chain or key does not parse, the key is
        not the leaf's, or the client CAs are given and hold no certificate."""
        cert_name, key_name, roots_name = names
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            raise GatewayTlsError(f"{cert_name}: no PEM certificate chain ({exc})") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise GatewayTlsError(
                f"{key_name}: not an unencrypted PEM private key ({exc})"
            ) from None
        leaf = chain[0]
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
            raise GatewayTlsError(
                f"{key_name}: not the key of the first certificate in {cert_name} "
                f"({leaf.subject.rfc4514_string() or 'no subject'})"
            )
        if client_roots_pem is not None:
            try:
                x509.load_pem_x509_certificates(client_roots_pem)
            except ValueError as exc:
                raise GatewayTlsError(f"{roots_name}: no PEM certificate ({exc})") from None
        return cls(chain_pem, key_pem, client_roots_pem, leaf.not_valid_after_utc)
