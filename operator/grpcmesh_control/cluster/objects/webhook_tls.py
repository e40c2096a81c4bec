"""The admission webhooks' TLS when the operator manages it itself (no cert-manager).

The API server calls the webhooks over HTTPS and trusts the ``caBundle`` in each webhook
configuration. The operator keeps a private CA and a serving certificate in one Secret
(``kubernetes.io/tls`` plus ``ca.crt``/``ca.key``), so every replica serves the same
certificate and the caBundle stays valid across restarts; the serving certificate is renewed
from the same CA, so renewing it never invalidates the caBundle.

Pure functions: what to issue, whether a stored bundle still fits, and the Secret and the
caBundle JSON patches to write. Randomness (keys, serials) is the only input not passed in.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from grpcmesh_control.cluster.objects.meta import tls_secret
from grpcmesh_control.mesh.ca import CaError, CertificateAuthority

__all__ = [
    "CA_VALIDITY",
    "RENEW_BEFORE",
    "SERVING_VALIDITY",
    "TlsBundle",
    "ca_bundle_patch",
    "ca_reusable",
    "issue",
    "renewal_reason",
    "secret_body",
]

CA_VALIDITY = dt.timedelta(days=3650)
SERVING_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
"""A serving certificate this close to expiry is renewed (at operator start)."""

CA_CERT, CA_KEY, TLS_CERT, TLS_KEY = "ca.crt", "ca.key", "tls.crt", "tls.key"


@dataclass(frozen=True)
class TlsBundle:
    """PEM bytes of the CA and of the serving certificate it signed."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any] | None) -> TlsBundle | None:
        """The bundle a Secret holds; None when it is missing or incomplete."""
        data = (secret or {}).get("data") or {}
        try:
            ca_cert, ca_key, cert, key = (
                base64.b64decode(data[k], validate=True)
                for k in (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY)
            )
        except (KeyError, ValueError, TypeError):
            return None
        return cls(ca_cert, ca_key, cert, key)


_CN_MAX = 64  # RFC 5280's ub-common-name
_SERVING_CN = "grpcmesh-webhook"
_CA_CN = "grpcmesh-webhook-ca"


def issue(dns_names: Sequence[str], now: dt.datetime, ca: TlsBundle | None = None) -> TlsBundle:
    """A serving certificate for ``dns_names``, signed by ``ca``'s CA (kept, so the caBundle
    already installed stays valid) or by a new CA when ``ca`` is None. The signing is the mesh
    certificate authority's (``mesh.ca``); the webhooks keep a root of their own, trusted by
    the API server only, apart from the mesh root the sidecars trust."""
    if not dns_names:
        raise ValueError("a serving certificate needs at least one DNS name")
    if ca is None:
        authority = CertificateAuthority.create_root(
            now, validity=CA_VALIDITY, common_name=_CA_CN, path_length=0
        )
    else:
        authority = CertificateAuthority.from_pem(ca.ca_cert, ca.ca_key)
    # Clients check the SANs only; the CN is informative and at most 64 characters, which a
    # Service's DNS name (<name>.<namespace>.svc) may exceed.
    common_name = dns_names[0] if len(dns_names[0]) <= _CN_MAX else _SERVING_CN
    serving = authority.issue_serving(
        dns_names, now, validity=SERVING_VALIDITY, common_name=common_name
    )
    _, ca_key, ca_cert = authority.pem()
    return TlsBundle(
        ca_cert=ca_cert, ca_key=ca_key, cert=serving.cert_chain_pem(), key=serving.key_pem()
    )


def renewal_reason(
    bundle: TlsBundle | None, dns_names: Sequence[str], now: dt.datetime
) -> str | None:
    """Why ``bundle`` cannot serve ``dns_names`` until ``now + RENEW_BEFORE``; None if it can."""
    if bundle is None:
        return "no certificate yet"
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca_cert)
        cert = x509.load_pem_x509_certificate(bundle.cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound) as exc:
        return f"unreadable certificate: {exc}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "the certificate was not issued by the stored CA"
    named = {str(value) for value in names.get_values_for_type(x509.DNSName)}
    named |= {str(value) for value in names.get_values_for_type(x509.IPAddress)}
    missing = sorted(set(dns_names) - named)
    if missing:
        return f"the certificate does not name {', '.join(missing)}"
    horizon = now + RENEW_BEFORE
    if cert.not_valid_after_utc <= horizon:
        return f"the certificate expires at {cert.not_valid_after_utc.isoformat()}"
    if ca.not_valid_after_utc <= horizon:
        return f"the CA expires at {ca.not_valid_after_utc.isoformat()}"
    return None


def ca_reusable(bundle: TlsBundle | None, now: dt.datetime) -> bool:
    """Whether ``bundle``'s CA can sign a renewed serving certificate (so the installed
    caBundle stays valid): readable, with its key, and valid past the new certificate."""
    if bundle is None:
        return False
    try:
        authority = CertificateAuthority.from_pem(bundle.ca_cert, bundle.ca_key)
    except CaError:
        return False
    return authority.certificate.not_valid_after_utc > now + SERVING_VALIDITY


def secret_body(bundle: TlsBundle, name: str, namespace: str) -> dict[str, Any]:
    """The ``kubernetes.io/tls`` Secret holding ``bundle``."""
    data = {
        CA_CERT: bundle.ca_cert,
        CA_KEY: bundle.ca_key,
        TLS_CERT: bundle.cert,
        TLS_KEY: bundle.key,
    }
    return tls_secret(name, namespace, data)


def ca_bundle_patch(configuration: Mapping[str, Any], ca_cert: bytes) -> list[dict[str, Any]]:
    """JSON-patch ops that set every webhook's ``clientConfig.caBundle`` in a webhook
    configuration to ``ca_cert``; empty when all already carry it. Each replace is guarded by
    a ``test`` of the webhook's name, so a concurrent reorder fails the patch instead of
    writing the wrong entry."""
    bundle = base64.b64encode(ca_cert).decode()
    ops: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        client = webhook.get("clientConfig") or {}
        if client.get("caBundle") == bundle:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook["name"]})
        ops.append(
            {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": bundle}
        )
    return ops
