"""Workload certificates for connected nodes (no sockets): issued on connect for the node's
SPIFFE ID, served as its SDS secrets, renewed at the configured fraction of their life from
issuance, forgotten on disconnect; the settings refuse bad values naming the knob."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from prometheus_client.parser import text_string_to_metric_families

from grpcmesh_control.host.metrics import CERTIFICATE_EXPIRY, CERTIFICATE_ISSUED, ROOTS_EXPIRY
from grpcmesh_control.host.xds_host import XdsHost
from grpcmesh_control.local.controlplane import (
    ControlPlane,
    ControlPlaneSettings,
    certificates_from_env,
)
from grpcmesh_control.mesh.ca import CertificateAuthority, spiffe_ids
from grpcmesh_control.mesh.certificates import (
    CertificateSettings,
    WorkloadCertificates,
    node_identity,
)
from grpcmesh_control.mesh.model import MethodCatalog
from grpcmesh_control.mesh.model.identity import SpiffeId
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_control.mesh.xds import LISTENER, SnapshotCache
from tests.unit.mesh.test_ca import make_intermediate

START = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
NODE = "sidecar~orders~0"


class Now:
    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> dt.datetime:
        return self.at


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create_root(START - dt.timedelta(days=1))


def served(cache: SnapshotCache, node: str) -> dict[str, secret_pb2.Secret]:
    secrets = cache.node_secrets(node)
    assert secrets is not None
    out = {}
    for name, packed in secrets.resources.items():
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        out[name] = secret
    return out


def make(
    ca: CertificateAuthority, settings: CertificateSettings | None = None
) -> tuple[SnapshotCache, WorkloadCertificates, Now]:
    cache, now = SnapshotCache(), Now()
    certificates = WorkloadCertificates(cache, ca, settings, now=now)
    return cache, certificates, now


def test_a_connecting_node_is_served_a_certificate_for_its_identity(
    ca: CertificateAuthority,
) -> None:
    cache, _, _ = make(ca, CertificateSettings(trust_domain="mesh.example"))
    cache.connected(NODE, {})
    secrets = served(cache, NODE)
    assert sorted(secrets) == ["mesh-roots", "workload"]
    chain = x509.load_pem_x509_certificates(
        secrets["workload"].tls_certificate.certificate_chain.inline_bytes
    )
    assert spiffe_ids(chain[0]) == (SpiffeId("mesh.example", "default", "orders"),)
    chain[0].verify_directly_issued_by(ca.root)
    key = serialization.load_pem_private_key(
        secrets["workload"].tls_certificate.private_key.inline_bytes, None
    )
    assert key.public_key() == chain[0].public_key()
    roots = x509.load_pem_x509_certificates(
        secrets["mesh-roots"].validation_context.trusted_ca.inline_bytes
    )
    assert roots == [ca.root]
    assert chain[0].not_valid_after_utc == START + dt.timedelta(hours=24)


def test_identities_of_sidecars_and_the_ingress() -> None:
    assert (
        node_identity("sidecar~payments~v2-1").uri
        == "spiffe://cluster.local/ns/default/sa/payments"
    )
    # Never a MeshService's: a service named "gateway" is not the ingress.
    ingress = "spiffe://cluster.local/ns/default/sa/grpcmesh-ingress"
    assert node_identity("ingress~gateway").uri == ingress
    assert node_identity("sidecar~gateway~0").uri == "spiffe://cluster.local/ns/default/sa/gateway"
    shop = node_identity("sidecar~orders~0", "td.example", lambda svc: "shop")
    # In a cluster the gateway's namespace is the release's, whatever MeshServices are called.
    gateway = node_identity("ingress~gateway", "td.example", lambda svc: "shop", "mesh-system")
    assert gateway.uri == "spiffe://td.example/ns/mesh-system/sa/grpcmesh-ingress"
    assert shop.uri == "spiffe://td.example/ns/shop/sa/orders"


def test_a_node_of_no_known_form_gets_nothing(ca: CertificateAuthority) -> None:
    cache, certificates, _ = make(ca)
    cache.connected("not-a-node", {})
    assert cache.node_secrets("not-a-node") is None
    assert certificates.issued_count == 0


def test_renewal_at_the_fraction_of_life_from_issuance(ca: CertificateAuthority) -> None:
    # 10 s certificates renewed at 80 %: due at 8 s after issuance, though the CA backdates
    # notBefore by minutes (renewing from notBefore would make them due at once).
    settings = CertificateSettings(ttl=dt.timedelta(seconds=10), renew_fraction=0.8)
    cache, certificates, now = make(ca, settings)
    cache.connected(NODE, {})
    first = certificates.certificate(NODE)
    assert first is not None
    generation = cache.node_generation(NODE)
    now.at = START + dt.timedelta(seconds=7.9)
    assert certificates.renew_due() == 0
    assert cache.node_generation(NODE) == generation
    now.at = START + dt.timedelta(seconds=8)
    assert certificates.renew_due() == 1
    second = certificates.certificate(NODE)
    assert second is not None
    assert second.certificate.serial_number != first.certificate.serial_number
    assert cache.node_generation(NODE) == generation + 1  # pushed to the node's stream
    pem = served(cache, NODE)["workload"].tls_certificate.certificate_chain.inline_bytes
    assert x509.load_pem_x509_certificates(pem)[0] == second.certificate


def test_a_disconnected_node_is_forgotten_and_reissued_on_return(
    ca: CertificateAuthority,
) -> None:
    cache, certificates, _ = make(ca)
    cache.connected(NODE, {})
    first = certificates.certificate(NODE)
    cache.disconnected(NODE)
    assert certificates.certificate(NODE) is None and cache.node_secrets(NODE) is None
    cache.connected(NODE, {})
    again = certificates.certificate(NODE)
    assert first is not None and again is not None
    assert again.certificate.serial_number != first.certificate.serial_number


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GRPCMESH_WORKLOAD_CERT_TTL": "soon"}, "GRPCMESH_WORKLOAD_CERT_TTL"),
        ({"GRPCMESH_WORKLOAD_CERT_TTL": "0s"}, "certificateTTL: must be positive"),
        ({"GRPCMESH_CERT_RENEW_FRACTION": "half"}, "GRPCMESH_CERT_RENEW_FRACTION"),
        ({"GRPCMESH_CERT_RENEW_FRACTION": "1.5"}, "renewFraction"),
        ({"GRPCMESH_TRUST_DOMAIN": "Not A Domain"}, "trustDomain"),
    ],
)
def test_bad_settings_are_refused_naming_the_knob(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        certificates_from_env(environ)


def test_settings_from_env() -> None:
    assert certificates_from_env({}) == CertificateSettings()
    assert certificates_from_env({"GRPCMESH_MTLS": "off"}) is None
    settings = certificates_from_env(
        {
            "GRPCMESH_WORKLOAD_CERT_TTL": "90s",
            "GRPCMESH_CERT_RENEW_FRACTION": "0.25",
            "GRPCMESH_TRUST_DOMAIN": "shop.example",
        }
    )
    assert settings == CertificateSettings(dt.timedelta(seconds=90), 0.25, "shop.example")


def test_without_mtls_the_control_plane_keeps_no_ca_and_serves_plaintext(
    tmp_path: Path, example_files: dict[str, bytes], catalog: MethodCatalog
) -> None:
    (tmp_path / "resources").mkdir()
    for name, content in example_files.items():
        (tmp_path / "resources" / name).write_bytes(content)
    plain = ControlPlane(ControlPlaneSettings(tmp_path, certificates=None), catalog=catalog)
    plain.sources.reload()
    plain.publisher.rebuild()
    plain.cache.connected(NODE, ProxyNode(NodeId.sidecar("orders", "0")).metadata())
    assert plain.host.certificates is None and cache_has_no_secrets(plain, NODE)
    assert not (tmp_path / "ca").exists()
    assert not _inbound(plain).filter_chains[0].HasField("transport_socket")

    mtls = ControlPlane(ControlPlaneSettings(tmp_path), catalog=catalog)
    mtls.sources.reload()
    mtls.publisher.rebuild()
    mtls.cache.connected(NODE, ProxyNode(NodeId.sidecar("orders", "0")).metadata())
    assert (tmp_path / "ca" / "tls.key").stat().st_mode & 0o077 == 0
    assert mtls.cache.node_secrets(NODE) is not None
    assert _inbound(mtls).filter_chains[0].transport_socket.name == "envoy.transport_sockets.tls"


def _inbound(control_plane: ControlPlane) -> listener_pb2.Listener:
    snapshot = control_plane.cache.config_snapshot(NODE)
    assert snapshot is not None
    inbound = listener_pb2.Listener()
    assert snapshot.of(LISTENER).resources["inbound"].Unpack(inbound)
    return inbound


def cache_has_no_secrets(control_plane: ControlPlane, node: str) -> bool:
    return control_plane.cache.node_secrets(node) is None


def test_each_held_certificate_is_shown_without_its_key(ca: CertificateAuthority) -> None:
    settings = CertificateSettings(ttl=dt.timedelta(hours=6))
    cache, certificates, now = make(ca, settings)
    cache.connected(NODE, {})
    cache.connected("ingress~gateway~0", {})
    held = certificates.held(NODE)
    issued = certificates.certificate(NODE)
    assert held is not None and issued is not None
    assert str(held.identity) == "spiffe://cluster.local/ns/default/sa/orders"
    assert (held.issued_at, held.not_after) == (START, START + dt.timedelta(hours=6))
    assert held.serial == issued.certificate.serial_number
    assert [c.node_id for c in certificates.all_held()] == ["ingress~gateway~0", NODE]
    assert certificates.roots_not_after == ca.root.not_valid_after_utc
    now.at = START + dt.timedelta(hours=3)
    certificates.renew_due()
    renewed = certificates.held(NODE)
    assert renewed is not None and renewed.issued_at == now.at and renewed.serial != held.serial
    cache.disconnected(NODE)
    assert certificates.held(NODE) is None


def test_the_roots_expiry_is_the_earliest_of_the_signing_chain() -> None:
    # A user's intermediate that expires (in a year) long before their root (ten years).
    their_root = CertificateAuthority.create_root(START - dt.timedelta(days=1))
    cert_pem, key_pem = make_intermediate(their_root)
    mesh = CertificateAuthority.from_pem(cert_pem, key_pem, their_root.pem()[2])
    assert mesh.certificate.not_valid_after_utc < their_root.root.not_valid_after_utc
    _, certificates, _ = make(mesh)
    assert certificates.roots_not_after == mesh.certificate.not_valid_after_utc


def _samples(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition.decode())
        for s in family.samples
    }


def test_the_control_plane_exports_each_nodes_certificate_expiry_until_it_leaves(
    ca: CertificateAuthority,
) -> None:
    host = XdsHost(MethodCatalog(()), ca=ca)
    host.cache.connected(NODE, {})
    held = host.certificates.held(NODE) if host.certificates else None
    assert held is not None
    labels = (("identity", "spiffe://cluster.local/ns/default/sa/orders"), ("node", NODE))
    samples = _samples(host.metrics.exposition())
    assert samples[(CERTIFICATE_EXPIRY, labels)] == held.not_after.timestamp()
    assert samples[(CERTIFICATE_ISSUED, labels)] == held.issued_at.timestamp()
    assert samples[(ROOTS_EXPIRY, ())] == ca.root.not_valid_after_utc.timestamp()
    # /status names the node's identity and its certificate, never its key.
    (node,) = host.status()["nodes"]
    assert node["identity"] == "spiffe://cluster.local/ns/default/sa/orders"
    assert node["certificate"]["serial"] == f"{held.serial:x}"
    assert dt.datetime.fromisoformat(node["certificate"]["not_after"]) == held.not_after.replace(
        microsecond=held.not_after.microsecond // 1000 * 1000
    )
    assert "PRIVATE KEY" not in json.dumps(host.status())
    host.cache.disconnected(NODE)
    samples = _samples(host.metrics.exposition())
    assert not [key for key in samples if key[0] in (CERTIFICATE_EXPIRY, CERTIFICATE_ISSUED)]
    assert (ROOTS_EXPIRY, ()) in samples
    (node,) = host.status()["nodes"]
    assert (node["identity"], node["certificate"]) == (None, None)


def test_without_a_ca_no_certificate_series_and_no_identity() -> None:
    host = XdsHost(MethodCatalog(()))
    host.cache.connected(NODE, {})
    names = {key[0] for key in _samples(host.metrics.exposition())}
    assert not names & {CERTIFICATE_EXPIRY, CERTIFICATE_ISSUED, ROOTS_EXPIRY}
    (node,) = host.status()["nodes"]
    assert (node["identity"], node["certificate"]) == (None, None)


def test_a_host_takes_its_ca_after_construction_only_before_its_first_snapshot(
    tmp_path: Path,
    example_files: dict[str, bytes],
    catalog: MethodCatalog,
    ca: CertificateAuthority,
) -> None:
    """The operator's way (``XdsHost.use_ca``): it reads its CA from a Secret once running,
    so the host takes it later, with the cluster's settings (the gateway's namespace); once a
    snapshot was built without TLS it refuses, since that snapshot would stay plaintext."""
    (tmp_path / "resources").mkdir()
    for name, content in example_files.items():
        (tmp_path / "resources" / name).write_bytes(content)
    late = ControlPlane(ControlPlaneSettings(tmp_path, certificates=None), catalog=catalog)
    settings = CertificateSettings(
        trust_domain="td.example", ingress_namespace="mesh-system", plaintext_health_probes=True
    )
    late.host.use_ca(ca, settings)
    with pytest.raises(RuntimeError, match="already has a mesh CA"):
        late.host.use_ca(ca, settings)
    late.sources.reload()
    late.publisher.rebuild()
    late.cache.connected(NODE, ProxyNode(NodeId.sidecar("orders", "0")).metadata())
    secure, plain = _inbound(late).filter_chains
    assert secure.transport_socket.name == "envoy.transport_sockets.tls"
    assert secure.filter_chain_match.transport_protocol == "tls"
    # STRICT, but the kubelet's plaintext probe reaches the app's health check, and only it.
    assert plain.filter_chain_match.transport_protocol == "raw_buffer"
    assert not plain.HasField("transport_socket")
    hcm = hcm_pb2.HttpConnectionManager()
    assert plain.filters[0].typed_config.Unpack(hcm)
    routes = [r for host in hcm.route_config.virtual_hosts for r in host.routes]
    assert [r.match.path for r in routes] == ["/grpc.health.v1.Health/Check"]
    assert not [f.name for f in hcm.http_filters if "rbac" in f.name]
    gateway = "ingress~gateway"
    late.cache.connected(gateway, ProxyNode(NodeId.ingress("gateway")).metadata())
    assert late.host.certificates is not None
    issued = late.host.certificates.certificate(gateway)
    assert issued is not None
    assert [i.uri for i in spiffe_ids(issued.certificate)] == [
        "spiffe://td.example/ns/mesh-system/sa/grpcmesh-ingress"
    ]

    built = ControlPlane(ControlPlaneSettings(tmp_path, certificates=None), catalog=catalog)
    built.sources.reload()
    built.publisher.rebuild()
    with pytest.raises(RuntimeError, match="before the first snapshot"):
        built.host.use_ca(ca, settings)
