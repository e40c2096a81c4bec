"""The mesh certificate authority (mesh.ca): what it issues, how peers verify it (with
cryptography's X.509 path validation, as a TLS stack would), the rotation rule, a user's own
intermediate, and the trust bundle across a root rotation. No sockets, time passed in."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from grpcmesh_control.mesh.ca import (
    BACKDATE,
    DEFAULT_WORKLOAD_TTL,
    CaError,
    CertificateAuthority,
    Issued,
    load_certificates,
    spiffe_ids,
    trust_bundle,
)
from grpcmesh_control.mesh.model.identity import SpiffeId, workload_identity

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
ORDERS = workload_identity("orders", "shop")


@pytest.fixture(scope="module")
def root() -> CertificateAuthority:
    return CertificateAuthority.create_root(NOW)


@pytest.fixture(scope="module")
def svid(root: CertificateAuthority) -> Issued:
    return root.issue_workload(ORDERS, NOW)


def verify(issued: Issued, roots_pem: bytes, at: dt.datetime) -> x509.Certificate:
    """Path validation as a TLS peer does it: the presented chain against the bundle."""
    store = Store(load_certificates(roots_pem, "bundle"))
    verifier = PolicyBuilder().store(store).time(at).build_client_verifier()
    verified = verifier.verify(issued.certificate, list(issued.chain))
    return verified.chain[0]


def test_a_workload_certificate_verifies_against_the_root_and_names_only_its_spiffe_id(
    root: CertificateAuthority, svid: Issued
) -> None:
    verify(svid, root.pem()[2], NOW)
    cert = svid.certificate
    assert spiffe_ids(cert) == (ORDERS,)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.critical  # the subject is empty, so the SAN must be critical
    assert list(sans.value) == [
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/orders")
    ]
    assert list(cert.subject) == []


def test_a_workload_certificate_is_ecdsa_p256_short_lived_with_tls_usages(
    svid: Issued,
) -> None:
    cert = svid.certificate
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc == NOW + DEFAULT_WORKLOAD_TTL
    assert cert.not_valid_before_utc == NOW - BACKDATE
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_encipherment and not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert svid.key.public_key() == key


def test_the_lifetime_is_configurable_and_never_outlives_the_ca() -> None:
    short_root = CertificateAuthority.create_root(NOW, validity=dt.timedelta(hours=2))
    one_hour = short_root.issue_workload(ORDERS, NOW, ttl=dt.timedelta(hours=1))
    assert one_hour.not_after == NOW + dt.timedelta(hours=1)
    capped = short_root.issue_workload(ORDERS, NOW, ttl=dt.timedelta(hours=24))
    assert capped.not_after == short_root.certificate.not_valid_after_utc
    with pytest.raises(CaError, match="expired"):
        short_root.issue_workload(ORDERS, NOW + dt.timedelta(hours=3))
    with pytest.raises(CaError, match="positive"):
        short_root.issue_workload(ORDERS, NOW, ttl=dt.timedelta(0))


def test_a_certificate_from_a_foreign_ca_fails_verification(root: CertificateAuthority) -> None:
    foreign = CertificateAuthority.create_root(NOW)  # same names, different key
    impostor = foreign.issue_workload(ORDERS, NOW)
    with pytest.raises(VerificationError):
        verify(impostor, root.pem()[2], NOW)


def test_an_expired_certificate_fails_verification(
    root: CertificateAuthority, svid: Issued
) -> None:
    with pytest.raises(VerificationError):
        verify(svid, root.pem()[2], NOW + DEFAULT_WORKLOAD_TTL + dt.timedelta(seconds=1))


def test_the_ca_round_trips_through_pem(root: CertificateAuthority) -> None:
    cert, key, anchor = root.pem()
    again = CertificateAuthority.from_pem(cert, key, anchor)
    assert again.certificate == root.certificate and again.chain == ()
    assert again.issued(again.issue_workload(ORDERS, NOW).certificate)
    assert root.issued(again.issue_workload(ORDERS, NOW).certificate)


def make_intermediate(parent: CertificateAuthority, now: dt.datetime = NOW) -> tuple[bytes, bytes]:
    """A user's PKI: their root signs an intermediate for the mesh (as cert-manager would);
    its ``tls.crt`` and ``tls.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "platform mesh intermediate")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(parent.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(parent.key, hashes.SHA256())
    )
    inter = CertificateAuthority(cert, key, (parent.certificate,))
    return inter.pem()[0], inter.pem()[1]


def test_a_user_provided_intermediate_issues_certificates_their_root_verifies() -> None:
    their_root = CertificateAuthority.create_root(NOW, common_name="platform root")
    cert_pem, key_pem = make_intermediate(their_root)
    _, _, root_pem = their_root.pem()
    mesh = CertificateAuthority.from_pem(cert_pem, key_pem, root_pem)
    assert mesh.root == their_root.certificate
    issued = mesh.issue_workload(ORDERS, NOW)
    assert issued.chain == (mesh.certificate,)  # the leaf's holder sends the intermediate
    verify(issued, root_pem, NOW)
    # The stored form keeps the intermediate in tls.crt and the root in ca.crt.
    stored_cert, _, stored_root = mesh.pem()
    assert load_certificates(stored_cert, "tls.crt") == [mesh.certificate]
    assert stored_root == root_pem


def test_bad_key_material_is_refused_with_the_reason(root: CertificateAuthority) -> None:
    cert, key, anchor = root.pem()
    other = CertificateAuthority.create_root(NOW)
    with pytest.raises(CaError, match="does not belong"):
        CertificateAuthority.from_pem(cert, other.pem()[1])
    with pytest.raises(CaError, match="not PEM certificates"):
        CertificateAuthority.from_pem(b"garbage", key)
    with pytest.raises(CaError, match="not an unencrypted PEM private key"):
        CertificateAuthority.from_pem(cert, b"garbage")
    leaf = root.issue_workload(ORDERS, NOW)
    with pytest.raises(CaError, match="is not a CA"):
        CertificateAuthority.from_pem(leaf.cert_chain_pem(), leaf.key_pem())
    their_root = CertificateAuthority.create_root(NOW, common_name="platform root")
    cert_pem, key_pem = make_intermediate(their_root)
    with pytest.raises(CaError, match="include the root"):
        CertificateAuthority.from_pem(cert_pem, key_pem)
    with pytest.raises(CaError, match="is not issued by"):
        CertificateAuthority.from_pem(cert_pem, key_pem, anchor)  # someone else's root


def test_the_trust_bundle_trusts_old_and_new_roots_during_a_rotation() -> None:
    old = CertificateAuthority.create_root(
        NOW - dt.timedelta(days=30), validity=dt.timedelta(days=60)
    )
    new = CertificateAuthority.create_root(NOW)
    from_old, from_new = old.issue_workload(ORDERS, NOW), new.issue_workload(ORDERS, NOW)
    overlap = trust_bundle([new.certificate, old.certificate, new.certificate], NOW)
    assert load_certificates(overlap, "bundle") == [new.certificate, old.certificate]
    verify(from_old, overlap, NOW)
    verify(from_new, overlap, NOW)
    # Once the old root has expired it drops out of the bundle by itself.
    later = NOW + dt.timedelta(days=31)
    assert load_certificates(trust_bundle([new.certificate, old.certificate], later), "b") == [
        new.certificate
    ]
    # Before the overlap (only the old root trusted), the new root's certificates fail.
    with pytest.raises(VerificationError):
        verify(from_new, trust_bundle([old.certificate], NOW), NOW)


def test_an_empty_trust_bundle_is_an_error() -> None:
    old = CertificateAuthority.create_root(NOW, validity=dt.timedelta(days=1))
    with pytest.raises(CaError, match="empty"):
        trust_bundle([old.certificate], NOW + dt.timedelta(days=2))


def test_a_serving_certificate_names_its_hosts_and_verifies_as_a_server(
    root: CertificateAuthority,
) -> None:
    host = "grpcmesh-control.grpcmesh-system.svc"
    serving = root.issue_serving([host, "127.0.0.1"], NOW, validity=dt.timedelta(days=1))
    store = Store([root.certificate])
    for subject in (
        x509.DNSName(host),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        verifier = PolicyBuilder().store(store).time(NOW).build_server_verifier(subject)
        verifier.verify(serving.certificate, list(serving.chain))
    with pytest.raises(CaError, match="at least one"):
        root.issue_serving([], NOW, validity=dt.timedelta(days=1))


def test_only_spiffe_uris_count_as_identities() -> None:
    assert SpiffeId.parse("spiffe://example.org/ns/a/sa/b") == SpiffeId("example.org", "a", "b")
    for bad in (
        "https://example.org/ns/a/sa/b",
        "spiffe://example.org/ns/a/sa/b/",
        "spiffe://example.org/a/b",
        "spiffe://Example.org/ns/a/sa/b",
        "spiffe://example.org/ns/../sa/b",
    ):
        with pytest.raises(ValueError):
            SpiffeId.parse(bad)
