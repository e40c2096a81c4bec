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
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clock skew between the operator and API server

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


def issue(dns_names: Sequence[str], now: dt.datetime, ca: TlsBundle | None = None) -> TlsBundle:
    """A serving certificate for ``dns_names``, signed by ``ca``'s CA (kept, so the caBundle
    already installed stays valid) or by a new CA when ``ca`` is None."""
    if not dns_names:
        raise ValueError("a serving certificate needs at least one DNS name")
    if ca is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "grpcmesh-webhook-ca")])
        ca_cert = (
            _builder(ca_name, ca_name, ca_key.public_key(), now, CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
    else:
        ca_cert = x509.load_pem_x509_certificate(ca.ca_cert)
        loaded = serialization.load_pem_private_key(ca.ca_key, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("the stored CA key is not an EC key")
        ca_key = loaded
    key = ec.generate_private_key(ec.SECP256R1())
    # Clients check the SANs only; the CN is informative and at most 64 characters, which a
    # Service's DNS name (<name>.<namespace>.svc) may exceed.
    common_name = dns_names[0] if len(dns_names[0]) <= _CN_MAX else _SERVING_CN
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now, SERVING_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(name) for name in dns_names]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsBundle(
        ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM),
        ca_key=_pem(ca_key),
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=_pem(key),
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
        ca = x509.load_pem_x509_certificate(bundle.ca_cert)
        key = serialization.load_pem_private_key(bundle.ca_key, password=None)
    except ValueError:
        return False
    return (
        isinstance(key, ec.EllipticCurvePrivateKey)
        and key.public_key() == ca.public_key()
        and ca.not_valid_after_utc > now + SERVING_VALIDITY
    )


def secret_body(bundle: TlsBundle, name: str, namespace: str) -> dict[str, Any]:
    """The ``kubernetes.io/tls`` Secret holding ``bundle``."""
    data = {
        CA_CERT: bundle.ca_cert,
        CA_KEY: bundle.ca_key,
        TLS_CERT: bundle.cert,
        TLS_KEY: bundle.key,
    }
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


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    validity: dt.timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
    )


def _general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for a literal address (tests on loopback), else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
