"""The operator's own webhook TLS (k8s.webhook_tls): what it issues, when it renews, and what
it writes. No sockets: certificates are checked with the cryptography library directly."""

from __future__ import annotations

import base64
import datetime as dt

import jsonpatch
import kubernetes_validate
import pytest
from cryptography import x509

from grpcmesh_control.cluster.objects.webhook_tls import (
    RENEW_BEFORE,
    SERVING_VALIDITY,
    TlsBundle,
    ca_bundle_patch,
    ca_reusable,
    issue,
    renewal_reason,
    secret_body,
)

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
HOST = "grpcmesh-control.grpcmesh-system.svc"


@pytest.fixture(scope="module")
def bundle() -> TlsBundle:
    return issue([HOST], NOW)


def test_the_serving_certificate_is_signed_by_the_ca_and_names_the_service(
    bundle: TlsBundle,
) -> None:
    ca = x509.load_pem_x509_certificate(bundle.ca_cert)
    cert = x509.load_pem_x509_certificate(bundle.cert)
    cert.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [HOST]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == NOW + SERVING_VALIDITY


def test_a_literal_address_becomes_an_ip_san() -> None:
    cert = x509.load_pem_x509_certificate(issue(["127.0.0.1"], NOW).cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert renewal_reason(issue(["127.0.0.1"], NOW), ["127.0.0.1"], NOW) is None


def test_a_service_name_longer_than_a_common_name_is_certified() -> None:
    """A Service's DNS name may exceed the 64 characters a subject CN allows (long release
    and namespace names): it is certified in the SANs, which are what clients check."""
    host = f"{'r' * 40}-grpcmesh-control.{'n' * 50}.svc"
    issued = issue([host], NOW)
    cert = x509.load_pem_x509_certificate(issued.cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [host]
    assert renewal_reason(issued, [host], NOW) is None


def test_a_fresh_bundle_needs_no_renewal(bundle: TlsBundle) -> None:
    assert renewal_reason(bundle, [HOST], NOW) is None
    assert renewal_reason(bundle, [HOST], NOW + SERVING_VALIDITY - RENEW_BEFORE * 2) is None


@pytest.mark.parametrize(
    ("names", "later", "reason"),
    [
        ([HOST, "other.svc"], dt.timedelta(0), "does not name other.svc"),
        ([HOST], SERVING_VALIDITY - RENEW_BEFORE, "expires"),
    ],
)
def test_renewal_says_why(
    bundle: TlsBundle, names: list[str], later: dt.timedelta, reason: str
) -> None:
    found = renewal_reason(bundle, names, NOW + later)
    assert found is not None and reason in found


def test_missing_or_foreign_certificates_are_renewed(bundle: TlsBundle) -> None:
    assert renewal_reason(None, [HOST], NOW) == "no certificate yet"
    other = issue([HOST], NOW)
    mixed = TlsBundle(bundle.ca_cert, bundle.ca_key, other.cert, other.key)
    assert "not issued by the stored CA" in str(renewal_reason(mixed, [HOST], NOW))
    garbage = TlsBundle(b"junk", b"junk", b"junk", b"junk")
    assert "unreadable" in str(renewal_reason(garbage, [HOST], NOW))


def test_renewal_keeps_the_ca_so_the_installed_ca_bundle_stays_valid(bundle: TlsBundle) -> None:
    later = NOW + SERVING_VALIDITY - RENEW_BEFORE
    assert ca_reusable(bundle, later)
    renewed = issue([HOST], later, ca=bundle)
    assert renewed.ca_cert == bundle.ca_cert
    assert renewed.cert != bundle.cert
    assert renewal_reason(renewed, [HOST], later) is None


def test_a_ca_near_its_end_or_unusable_is_replaced(bundle: TlsBundle) -> None:
    assert not ca_reusable(None, NOW)
    assert not ca_reusable(bundle, NOW + dt.timedelta(days=3650) - SERVING_VALIDITY)
    other = issue([HOST], NOW)
    assert not ca_reusable(TlsBundle(bundle.ca_cert, other.ca_key, b"", b""), NOW)


def test_the_secret_round_trips_and_is_a_valid_tls_secret(bundle: TlsBundle) -> None:
    body = secret_body(bundle, "grpcmesh-webhook-tls", "grpcmesh-system")
    kubernetes_validate.validate(body, "1.31.0", strict=True)
    assert body["type"] == "kubernetes.io/tls"
    assert TlsBundle.from_secret(body) == bundle
    assert TlsBundle.from_secret(None) is None
    assert TlsBundle.from_secret({"data": {"tls.crt": "not base64!"}}) is None


def test_the_ca_bundle_patch_sets_each_webhook_once(bundle: TlsBundle) -> None:
    ca = base64.b64encode(bundle.ca_cert).decode()
    configuration = {
        "webhooks": [
            {"name": "meshservices.grpcmesh.io", "clientConfig": {"service": {"name": "x"}}},
            {"name": "inject.grpcmesh.io", "clientConfig": {"caBundle": ca}},
            {"name": "stale.grpcmesh.io", "clientConfig": {"caBundle": "b2xk"}},
        ]
    }
    ops = ca_bundle_patch(configuration, bundle.ca_cert)
    patched = jsonpatch.apply_patch(configuration, ops)
    assert [w["clientConfig"]["caBundle"] for w in patched["webhooks"]] == [ca, ca, ca]
    assert patched["webhooks"][0]["clientConfig"]["service"] == {"name": "x"}
    assert ca_bundle_patch(patched, bundle.ca_cert) == []
    reordered = {"webhooks": list(reversed(configuration["webhooks"]))}
    with pytest.raises(jsonpatch.JsonPatchTestFailed):  # a concurrent reorder fails loudly
        jsonpatch.apply_patch(reordered, ops)
