"""The mesh's one certificate authority: workload certificates and the operator's webhook
serving certificate are signed here, nowhere else.

- ``CertificateAuthority``: a signing certificate and its key. Either a self-signed root made
  by ``CertificateAuthority.create_root``, or a user's intermediate loaded with its chain up to
  their root (``from_pem``), for platforms that run their own PKI. ``pem()`` / ``from_pem``
  are how it is stored: a Secret in a cluster, the state directory locally.
- ``issue_workload``: a short-lived X.509-SVID (24 h by default) for one ``SpiffeId``: the
  SPIFFE ID is the only identity in it (URI SAN, empty subject), ECDSA P-256, digital
  signature only, usable as TLS server and client.
- ``issue_serving``: a TLS server certificate for DNS names or addresses (the webhooks).
- ``trust_bundle``: the roots a peer should trust; during a root rotation it holds both the
  old and the new root so certificates from either verify until the old ones are gone.

Pure: time is always an argument; the only other input is randomness (keys, serials).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from grpcmesh_control.mesh.model.durations import parse_duration
from grpcmesh_control.mesh.model.identity import (
    DEFAULT_TRUST_DOMAIN,
    LOCAL_NAMESPACE,
    SpiffeId,
    validate_trust_domain,
)
from grpcmesh_control.mesh.translate.tls import MeshTls

__all__ = [
    "BACKDATE",
    "DEFAULT_RENEW_FRACTION",
    "DEFAULT_ROOT_VALIDITY",
    "DEFAULT_WORKLOAD_TTL",
    "CaError",
    "CertificateAuthority",
    "CertificateSettings",
    "Issued",
    "certificate_settings_from_env",
    "load_certificates",
    "spiffe_ids",
    "trust_bundle",
]

DEFAULT_WORKLOAD_TTL = dt.timedelta(hours=24)
"""How long a workload certificate is valid: short, so a leaked key is soon worthless."""
DEFAULT_ROOT_VALIDITY = dt.timedelta(days=3650)
"""A self-signed root's lifetime; rotating it is a deliberate, documented operation."""
DEFAULT_RENEW_FRACTION = 0.5
"""A certificate is renewed once this fraction of its lifetime has passed (half life)."""
BACKDATE = dt.timedelta(minutes=5)
"""``notBefore`` lies this far before issuance, so clock skew between the signer and the
verifier does not make a fresh certificate "not yet valid"."""

_ROOT_NAME = "grpcmesh mesh root CA"
_ORGANIZATION = "grpcmesh"


class CaError(ValueError):
    """Key material that cannot serve as this certificate authority (the message says why)."""


@dataclass(frozen=True)
class Issued:
    """A certificate signed by a ``CertificateAuthority``, with its key and chain.

    ``chain`` is what a TLS peer sends after the leaf: the issuing CA's certificate and the
    intermediates above it, without the root (the verifier holds the root in its bundle)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def cert_chain_pem(self) -> bytes:
        """The leaf then its chain, PEM: what a TLS server or client presents."""
        return b"".join(_cert_pem(cert) for cert in (self.certificate, *self.chain))

    def key_pem(self) -> bytes:
        return _key_pem(self.key)


@dataclass(frozen=True)
class CertificateAuthority:
    """A signing certificate, its private key, and the certificates above it.

    ``chain`` runs from the signer's issuer up to the root; it is empty for a self-signed
    root. ``roots`` is what peers must trust to verify what this CA issues."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = field(default=())

    def __post_init__(self) -> None:
        _check_signer(self.certificate, self.key, self.chain)

    @classmethod
    def create_root(
        cls,
        now: dt.datetime,
        *,
        validity: dt.timedelta = DEFAULT_ROOT_VALIDITY,
        common_name: str = _ROOT_NAME,
        path_length: int | None = 1,
    ) -> CertificateAuthority:
        """A new self-signed root. ``path_length`` 1 leaves room for one intermediate below
        it (a per-cluster signer, later); 0 forbids any."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        cert = (
            _builder(name, name, key.public_key(), now, validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(
        cls, cert_pem: bytes, key_pem: bytes, chain_pem: bytes = b""
    ) -> CertificateAuthority:
        """The CA stored as PEM: ``cert_pem`` is the signing certificate, optionally followed by
        its chain (as cert-manager writes ``tls.crt``); ``chain_pem`` may add more of the chain
        (e.g. the root from ``ca.crt``). A certificate already present is not repeated.
        ``CaError`` says what does not fit: no certificate, a key that is not ECDSA or does not
        match, a signing certificate that is not a CA, a chain that does not link up."""
        certs = load_certificates(cert_pem, "the CA certificate")
        extra = load_certificates(chain_pem, "the CA chain") if chain_pem.strip() else []
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CaError(f"the CA key is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"the CA key is {type(key).__name__}, not an ECDSA key")
        signer, *chain = certs
        seen = {signer.fingerprint(hashes.SHA256())}
        ordered: list[x509.Certificate] = []
        for cert in (*chain, *extra):
            fingerprint = cert.fingerprint(hashes.SHA256())
            if fingerprint not in seen:
                seen.add(fingerprint)
                ordered.append(cert)
        return cls(signer, key, tuple(ordered))

    def pem(self) -> tuple[bytes, bytes, bytes]:
        """``(certificate and chain without the root, key, root)`` as PEM: the layout of a
        ``kubernetes.io/tls`` Secret with ``ca.crt`` (``tls.crt``, ``tls.key``, ``ca.crt``),
        which is also what cert-manager writes for a CA certificate."""
        above = self.chain[:-1] if self.chain else ()
        cert = b"".join(_cert_pem(c) for c in (self.certificate, *above))
        return cert, _key_pem(self.key), _cert_pem(self.root)

    @property
    def root(self) -> x509.Certificate:
        """The trust anchor of what this CA issues: the top of the chain, or itself."""
        return self.chain[-1] if self.chain else self.certificate

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What an issued certificate's holder sends between its leaf and the root."""
        if not self.chain:
            return ()
        return (self.certificate, *self.chain[:-1])

    def issue_workload(
        self,
        identity: SpiffeId,
        now: dt.datetime,
        *,
        ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL,
    ) -> Issued:
        """An X.509-SVID for ``identity``, valid for ``ttl`` (never past the CA's own expiry).

        The SPIFFE ID is the only identity: one URI SAN, an empty subject (so the SAN is
        critical, RFC 5280 4.2.1.6), no DNS names. Key usage digitalSignature only (ECDSA has
        no key encipherment); extended key usage serverAuth and clientAuth, since the same
        certificate serves a sidecar's inbound listener and originates its egress mTLS."""
        if ttl <= dt.timedelta(0):
            raise CaError(f"a workload certificate's lifetime must be positive, not {ttl}")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._leaf(x509.Name([]), key.public_key(), now, ttl)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert, key, self.intermediates)

    def issue_serving(
        self,
        names: Sequence[str],
        now: dt.datetime,
        *,
        validity: dt.timedelta,
        common_name: str | None = None,
    ) -> Issued:
        """A TLS server certificate for DNS ``names`` (a literal IP address becomes an IP SAN,
        for tests on loopback). ``common_name`` is informative only; clients check SANs."""
        if not names:
            raise CaError("a serving certificate needs at least one DNS name")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
        )
        cert = (
            self._leaf(subject, key.public_key(), now, validity)
            .add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]),
                critical=not common_name,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert, key, self.intermediates)

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` was signed by this CA's key (directly)."""
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def _leaf(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        now: dt.datetime,
        validity: dt.timedelta,
    ) -> x509.CertificateBuilder:
        not_after = min(now + validity, self.certificate.not_valid_after_utc)
        if not_after <= now:
            raise CaError(f"the CA expired at {self.certificate.not_valid_after_utc.isoformat()}")
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False
            )
        )


def trust_bundle(roots: Iterable[x509.Certificate], now: dt.datetime) -> bytes:
    """The PEM bundle of trust anchors peers should hold at ``now``.

    Pass the current root first and, during a root rotation, the previous ones after it: the
    bundle keeps every root still valid (each once, in the order given), so certificates from
    the old root keep verifying while workloads move to the new one; an expired root drops out
    by itself. ``CaError`` when no root is left, since an empty bundle would refuse everyone."""
    seen: set[bytes] = set()
    kept: list[bytes] = []
    for root in roots:
        fingerprint = root.fingerprint(hashes.SHA256())
        if fingerprint in seen or not (root.not_valid_before_utc <= now < root.not_valid_after_utc):
            continue
        seen.add(fingerprint)
        kept.append(_cert_pem(root))
    if not kept:
        raise CaError(f"no root is valid at {now.isoformat()}: the trust bundle would be empty")
    return b"".join(kept)


def spiffe_ids(cert: x509.Certificate) -> tuple[SpiffeId, ...]:
    """The SPIFFE IDs ``cert``'s URI SANs name (unparseable URIs are not identities)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    found = []
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            found.append(SpiffeId.parse(uri))
        except ValueError:
            continue
    return tuple(found)


def load_certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; ``CaError`` naming ``what`` if there is none."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CaError(f"{what} is not PEM certificates: {exc}") from exc
    return certs


def _check_signer(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]
) -> None:
    if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
        raise CaError(f"the CA key's curve {key.curve.name} is not P-256 or P-384")
    if key.public_key() != cert.public_key():
        raise CaError("the CA key does not belong to the CA certificate")
    for index, candidate in enumerate((cert, *chain)):
        try:
            constraints = candidate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            where = "the CA certificate" if index == 0 else f"chain certificate {index}"
            raise CaError(
                f"{where} ({candidate.subject.rfc4514_string()}) is not a CA (basicConstraints)"
            )
    for child, parent in zip((cert, *chain), chain, strict=False):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CaError(
                f"{child.subject.rfc4514_string()} is not issued by the next certificate in "
                f"the chain ({parent.subject.rfc4514_string()})"
            ) from exc
    top = chain[-1] if chain else cert
    if top.issuer != top.subject:
        # An intermediate without its root: peers could not verify anything it issues.
        raise CaError(
            f"the chain ends at {top.subject.rfc4514_string()}, which is not self-signed: "
            "include the root certificate"
        )


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
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
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


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class CertificateSettings:
    """Workload identities and their certificates, in both modes (the chart's ``identity.*``,
    local mode's ``GRPCMESH_*`` knobs: ``certificate_settings_from_env``)."""

    ttl: dt.timedelta = DEFAULT_WORKLOAD_TTL
    """Lifetime of a workload certificate (24 h): short, so a leaked key soon expires."""
    renew_fraction: float = DEFAULT_RENEW_FRACTION
    """A workload certificate is renewed once this fraction of its lifetime has passed (0.5:
    at half life), leaving the other half to ride out a control plane outage."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    """The SPIFFE trust domain: ``spiffe://<trust_domain>/ns/<namespace>/sa/<sa>``. One per
    mesh; two clusters sharing a root but not a trust domain do not trust each other's names."""
    ingress_namespace: str = LOCAL_NAMESPACE
    """Where the ingress gateway runs (a cluster: the release namespace, the operator's own):
    its certificate and ``from.ingress`` rules name ``ingress_identity`` there."""
    plaintext_health_probes: bool = False
    """STRICT sidecars also answer the plaintext gRPC health check (``MeshTls``): a cluster's
    kubelet probes through the inbound port."""

    def __post_init__(self) -> None:
        if self.ttl <= dt.timedelta(0):
            raise ValueError(f"identity.certificateTTL: must be positive, not {self.ttl}")
        if not 0 < self.renew_fraction < 1:
            raise ValueError(
                "identity.renewFraction: must be between 0 and 1 (exclusive), not "
                f"{self.renew_fraction}"
            )
        validate_trust_domain(self.trust_domain, "identity.trustDomain")

    @property
    def tls(self) -> MeshTls:
        return MeshTls(self.trust_domain, self.ingress_namespace, self.plaintext_health_probes)


def certificate_settings_from_env(
    environ: Mapping[str, str], defaults: CertificateSettings | None = None
) -> CertificateSettings:
    """``GRPCMESH_TRUST_DOMAIN``, ``GRPCMESH_WORKLOAD_CERT_TTL`` (a duration) and
    ``GRPCMESH_CERT_RENEW_FRACTION`` over ``defaults``: the knobs both modes read (the chart
    sets them from ``identity.*``). ``ValueError`` naming the variable when one is not valid."""
    defaults = defaults or CertificateSettings()
    ttl, fraction = (
        environ.get("GRPCMESH_WORKLOAD_CERT_TTL"),
        environ.get("GRPCMESH_CERT_RENEW_FRACTION"),
    )
    try:
        ttl_value = defaults.ttl if not ttl else parse_duration(ttl)
    except ValueError as exc:
        raise ValueError(f"GRPCMESH_WORKLOAD_CERT_TTL: {exc}") from None
    try:
        fraction_value = defaults.renew_fraction if not fraction else float(fraction)
    except ValueError:
        raise ValueError(f"GRPCMESH_CERT_RENEW_FRACTION: {fraction!r} is not a number") from None
    try:
        return CertificateSettings(
            ttl=ttl_value,
            renew_fraction=fraction_value,
            trust_domain=environ.get("GRPCMESH_TRUST_DOMAIN") or defaults.trust_domain,
            ingress_namespace=defaults.ingress_namespace,
            plaintext_health_probes=defaults.plaintext_health_probes,
        )
    except ValueError as exc:
        raise ValueError(f"GRPCMESH_* certificate settings: {exc}") from None
