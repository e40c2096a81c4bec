"""The ingress gateway's TLS for outside clients (pure, no sockets): what the ingress listener
demands with and without it, the SDS secrets that carry the configured certificate, the
checks on that certificate, and how it reaches each gateway node beside its workload
certificate (the xDS cache, no streams)."""

from __future__ import annotations

import datetime as dt

import pytest
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2

from grpcmesh_control.mesh.ca import CertificateAuthority
from grpcmesh_control.mesh.gateway_tls import (
    GATEWAY_SECRETS,
    GatewayCertificate,
    GatewayCertificates,
    GatewayTlsError,
)
from grpcmesh_control.mesh.translate import (
    GatewayTls,
    MeshTls,
    NodeId,
    ProxyNode,
    Registry,
    SnapshotBuilder,
    build_snapshot,
    gateway_secrets,
)
from grpcmesh_control.mesh.translate.tls import (
    GATEWAY_ALPN,
    GATEWAY_CERTIFICATE_SECRET,
    GATEWAY_CLIENT_ROOTS_SECRET,
    TLS_TRANSPORT_SOCKET,
)
from grpcmesh_control.mesh.translate.versioned import SECRET, pack_resources
from grpcmesh_control.mesh.xds import SnapshotCache

from .envoy_views import listener

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
GATEWAY = "ingress~gateway"
TLS_1_2 = common_pb2.TlsParameters.TlsProtocol.TLSv1_2


def _context(registry: Registry, gateway: GatewayTls | None) -> tls_pb2.DownstreamTlsContext | None:
    snapshot = build_snapshot(registry, ProxyNode(NodeId.ingress()), gateway_tls=gateway)
    [chain] = listener(snapshot, "ingress").filter_chains
    if not chain.HasField("transport_socket"):
        return None
    assert chain.transport_socket.name == TLS_TRANSPORT_SOCKET
    context = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(context)
    return context


def test_the_ingress_is_plaintext_unless_gateway_tls_is_configured(registry: Registry) -> None:
    assert _context(registry, None) is None


def test_the_ingress_serves_the_configured_certificate_over_sds(registry: Registry) -> None:
    context = _context(registry, GatewayTls())
    assert context is not None
    common = context.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == [
        GATEWAY_CERTIFICATE_SECRET
    ]
    assert common.tls_certificate_sds_secret_configs[0].sds_config.HasField("ads")
    assert not common.tls_certificates  # never inline: the key travels as an SDS secret
    assert tuple(common.alpn_protocols) == GATEWAY_ALPN == ("h2", "http/1.1")
    assert common.tls_params.tls_minimum_protocol_version == TLS_1_2
    # No client certificate asked for, none validated.
    assert not context.require_client_certificate.value
    assert not common.HasField("validation_context_sds_secret_config")


def test_client_certificates_can_be_required_from_configured_cas(registry: Registry) -> None:
    context = _context(registry, GatewayTls(require_client_certificate=True))
    assert context is not None
    assert context.require_client_certificate.value is True
    validation = context.common_tls_context.validation_context_sds_secret_config
    assert validation.name == GATEWAY_CLIENT_ROOTS_SECRET


def test_gateway_tls_leaves_the_mtls_into_the_mesh_and_the_sidecars_alone(
    registry: Registry,
) -> None:
    mesh = MeshTls("mesh.example")
    builder = SnapshotBuilder(mesh, GatewayTls())
    with_gateway = builder(registry, ProxyNode(NodeId.ingress()))
    without = build_snapshot(registry, ProxyNode(NodeId.ingress()), tls=mesh)
    assert with_gateway.clusters == without.clusters  # still mTLS into the mesh
    sidecar = ProxyNode(NodeId.sidecar("orders", "0"))
    assert builder(registry, sidecar).version == build_snapshot(registry, sidecar, tls=mesh).version


def test_gateway_secrets_carry_the_chain_key_and_client_cas() -> None:
    [certificate] = gateway_secrets(b"chain", b"key")
    assert certificate.name == GATEWAY_CERTIFICATE_SECRET
    assert certificate.tls_certificate.certificate_chain.inline_bytes == b"chain"
    assert certificate.tls_certificate.private_key.inline_bytes == b"key"
    _, roots = gateway_secrets(b"chain", b"key", b"cas")
    assert roots.name == GATEWAY_CLIENT_ROOTS_SECRET
    assert roots.validation_context.trusted_ca.inline_bytes == b"cas"


# --- the configured certificate ------------------------------------------------------------


def _serving(names: tuple[str, ...] = ("127.0.0.1", "shop.example")) -> tuple[bytes, bytes]:
    issued = CertificateAuthority.create_root(NOW).issue_serving(
        names, NOW, validity=dt.timedelta(days=30)
    )
    return issued.cert_chain_pem(), issued.key_pem()


def test_a_matching_chain_and_key_make_a_certificate() -> None:
    chain, key = _serving()
    certificate = GatewayCertificate.from_pem(chain, key)
    assert certificate.tls == GatewayTls()
    assert certificate.not_after == NOW + dt.timedelta(days=30)
    cas = CertificateAuthority.create_root(NOW).pem()[2]
    with_clients = GatewayCertificate.from_pem(chain, key, cas)
    assert with_clients.tls == GatewayTls(require_client_certificate=True)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("garbage chain", "cert.pem: no PEM certificate chain"),
        ("garbage key", "key.pem: not an unencrypted PEM private key"),
        ("another key", "key.pem: not the key of the first certificate in cert.pem"),
        ("garbage client CA", "ca.pem: no PEM certificate"),
    ],
)
def test_a_certificate_that_cannot_serve_is_refused_naming_the_file(
    case: str, message: str
) -> None:
    chain, key = _serving()
    _, other_key = _serving()
    given: dict[str, tuple[bytes, bytes, bytes | None]] = {
        "garbage chain": (b"nothing", key, None),
        "garbage key": (chain, b"nothing", None),
        "another key": (chain, other_key, None),
        "garbage client CA": (chain, key, b"nothing"),
    }
    with pytest.raises(GatewayTlsError, match=message):
        GatewayCertificate.from_pem(*given[case], names=("cert.pem", "key.pem", "ca.pem"))


# --- delivery ------------------------------------------------------------------------------


def _names(cache: SnapshotCache, node_id: str) -> dict[str, bytes]:
    """Each secret the node is served, by name: its certificate (or roots) bytes."""
    served = cache.node_secrets(node_id)
    out: dict[str, bytes] = {}
    for name, packed in ({} if served is None else served.resources).items():
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        out[name] = (
            secret.tls_certificate.certificate_chain.inline_bytes
            or secret.validation_context.trusted_ca.inline_bytes
        )
    return out


def test_every_gateway_is_served_the_certificate_beside_its_workload_secrets() -> None:
    cache = SnapshotCache()
    chain, key = _serving()
    GatewayCertificates(cache, GatewayCertificate.from_pem(chain, key))
    workload = secret_pb2.Secret(name="workload")
    cache.connected(GATEWAY)
    cache.set_node_secrets(GATEWAY, pack_resources(SECRET, [workload]))
    cache.connected("sidecar~orders~0")
    assert sorted(_names(cache, GATEWAY)) == [GATEWAY_CERTIFICATE_SECRET, "workload"]
    assert _names(cache, GATEWAY)[GATEWAY_CERTIFICATE_SECRET] == chain
    assert _names(cache, "sidecar~orders~0") == {}  # a sidecar never gets it


def test_an_updated_certificate_is_pushed_to_connected_gateways() -> None:
    cache = SnapshotCache()
    first, second = (GatewayCertificate.from_pem(*_serving()) for _ in range(2))
    gateway = GatewayCertificates(cache, first)
    cache.connected(GATEWAY)
    before = cache.node_generation(GATEWAY)
    version = cache.node_secrets(GATEWAY)
    assert gateway.update(second) is True
    assert gateway.update(second) is False  # the same one again: no push
    assert cache.node_generation(GATEWAY) == before + 1
    assert cache.node_secrets(GATEWAY) != version
    assert _names(cache, GATEWAY)[GATEWAY_CERTIFICATE_SECRET] == second.chain_pem
    # Whether client certificates are required is the listener's shape: fixed at start.
    cas = CertificateAuthority.create_root(NOW).pem()[2]
    with pytest.raises(GatewayTlsError, match="restart the control plane"):
        gateway.update(GatewayCertificate.from_pem(second.chain_pem, second.key_pem, cas))


def test_without_a_certificate_yet_a_gateway_is_served_none_until_it_comes() -> None:
    cache = SnapshotCache()
    gateway = GatewayCertificates(cache, None)
    cache.connected(GATEWAY)
    assert cache.node_secrets(GATEWAY) is None
    certificate = GatewayCertificate.from_pem(*_serving())
    gateway.update(certificate)
    assert _names(cache, GATEWAY) == {GATEWAY_CERTIFICATE_SECRET: certificate.chain_pem}


def test_a_gateway_that_disconnects_is_forgotten() -> None:
    cache = SnapshotCache()
    GatewayCertificates(cache, GatewayCertificate.from_pem(*_serving()))
    cache.connected(GATEWAY)
    cache.disconnected(GATEWAY)
    assert cache.node_secrets(GATEWAY) is None
    cache.connected(GATEWAY)
    assert GATEWAY_CERTIFICATE_SECRET in _names(cache, GATEWAY)
    assert GATEWAY_SECRETS == "gateway"
