"""mTLS translation (pure, no sockets): what each sidecar's inbound listener demands of a
caller, what each cluster demands of the server it calls, PERMISSIVE's two filter chains,
and the SDS secrets a node is served."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2

from grpcmesh_control.mesh.model import InvalidResource, MtlsMode, parse_mesh_service
from grpcmesh_control.mesh.translate import (
    MeshTls,
    NodeId,
    ProxyNode,
    Registry,
    Snapshot,
    SnapshotBuilder,
    build_snapshot,
    workload_secrets,
)
from grpcmesh_control.mesh.translate.tls import ROOTS_SECRET, TLS_INSPECTOR, WORKLOAD_SECRET

from .conftest import ENDPOINTS
from .envoy_views import cluster, listener

TLS = MeshTls("mesh.example")


def _registry(registry: Registry, mode: MtlsMode) -> Registry:
    """The reference registry with payments in ``mode``."""
    services = [
        dataclasses.replace(s, mtls=mode) if s.name == "payments" else s for s in registry.services
    ]
    return Registry.build(services, ENDPOINTS, registry.catalog)


def _sidecar(registry: Registry, service: str, tls: MeshTls | None = TLS) -> Snapshot:
    return build_snapshot(registry, ProxyNode(NodeId.sidecar(service, "0")), tls=tls)


def _downstream(chain: object) -> tls_pb2.DownstreamTlsContext:
    context = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(context)  # type: ignore[attr-defined]
    return context


def _upstream(item: object) -> tls_pb2.UpstreamTlsContext:
    context = tls_pb2.UpstreamTlsContext()
    assert item.transport_socket.typed_config.Unpack(context)  # type: ignore[attr-defined]
    return context


def _uri_matchers(common: tls_pb2.CommonTlsContext) -> list[tuple[str, str]]:
    """(kind, value) of each URI SAN matcher the peer must satisfy."""
    matchers = common.combined_validation_context.default_validation_context
    found = []
    for m in matchers.match_typed_subject_alt_names:
        assert m.san_type == m.SanType.URI
        kind = m.matcher.WhichOneof("match_pattern") or ""
        found.append((kind, getattr(m.matcher, kind)))
    return found


def _names_its_secrets(common: tls_pb2.CommonTlsContext) -> None:
    [own] = common.tls_certificate_sds_secret_configs
    roots = common.combined_validation_context.validation_context_sds_secret_config
    assert (own.name, roots.name) == (WORKLOAD_SECRET, ROOTS_SECRET)
    # Over the node's ADS stream, never from a file or a separate SDS server.
    assert own.sds_config.HasField("ads") and roots.sds_config.HasField("ads")
    assert list(common.alpn_protocols) == ["h2"]


def test_inbound_requires_a_client_certificate_of_the_trust_domain(registry: Registry) -> None:
    inbound = listener(_sidecar(registry, "payments"), "inbound")
    [chain] = inbound.filter_chains
    context = _downstream(chain)
    assert context.require_client_certificate.value is True
    assert _uri_matchers(context.common_tls_context) == [("prefix", "spiffe://mesh.example/")]
    _names_its_secrets(context.common_tls_context)
    assert not inbound.listener_filters  # no plaintext path, no inspector needed


def test_clusters_originate_mtls_and_pin_the_server_identity(registry: Registry) -> None:
    orders = _sidecar(registry, "orders")
    for name, service in (("payments|v1", "payments"), ("inventory|v1", "inventory")):
        context = _upstream(cluster(orders, name))
        assert _uri_matchers(context.common_tls_context) == [
            ("exact", f"spiffe://mesh.example/ns/default/sa/{service}")
        ]
        _names_its_secrets(context.common_tls_context)
        # Envoy's client side would stop at TLS 1.2: sidecars speak TLS 1.3 to each other.
        params = context.common_tls_context.tls_params
        assert params.tls_maximum_protocol_version == params.TlsProtocol.TLSv1_3
    # The app on the pod's loopback is not a mesh peer: plaintext.
    assert not cluster(orders, "inbound|50051").HasField("transport_socket")


def test_the_ingress_originates_mtls_into_the_mesh_and_serves_outside_clients_as_before(
    registry: Registry,
) -> None:
    gateway = build_snapshot(registry, ProxyNode(NodeId.ingress()), tls=TLS)
    for item in gateway.clusters:
        if "|" in item.name:
            assert _upstream(item).common_tls_context.tls_certificate_sds_secret_configs
    [chain] = listener(gateway, "ingress").filter_chains
    assert not chain.HasField("transport_socket")


def test_permissive_accepts_plaintext_beside_mtls_on_that_service_only(
    registry: Registry,
) -> None:
    permissive = _registry(registry, MtlsMode.PERMISSIVE)
    inbound = listener(_sidecar(permissive, "payments"), "inbound")
    assert [f.name for f in inbound.listener_filters] == [TLS_INSPECTOR]
    chains = {c.filter_chain_match.transport_protocol: c for c in inbound.filter_chains}
    assert sorted(chains) == ["raw_buffer", "tls"]
    assert _downstream(chains["tls"]).require_client_certificate.value is True
    assert not chains["raw_buffer"].HasField("transport_socket")
    # Both chains reach the same app the same way.
    assert chains["tls"].filters == chains["raw_buffer"].filters
    # Others keep STRICT.
    assert len(listener(_sidecar(permissive, "orders"), "inbound").filter_chains) == 1


def test_without_a_mesh_ca_everything_stays_plaintext(registry: Registry) -> None:
    orders = _sidecar(registry, "orders", tls=None)
    assert not any(c.HasField("transport_socket") for c in orders.clusters if "|v" in c.name)
    assert not listener(orders, "inbound").filter_chains[0].HasField("transport_socket")


def test_the_builder_shares_one_snapshot_between_replicas(registry: Registry) -> None:
    # The TLS contexts only name the secrets: replicas still share one group snapshot.
    builder = SnapshotBuilder(TLS)
    first = builder(registry, ProxyNode(NodeId.sidecar("orders", "0")))
    second = builder(registry, ProxyNode(NodeId.sidecar("orders", "1")))
    assert first.packed.version == second.packed.version
    assert _upstream(
        cluster(first, "payments|v1")
    ).common_tls_context.tls_certificate_sds_secret_configs


def test_workload_secrets_carry_the_chain_key_and_roots() -> None:
    certificate, roots = workload_secrets(b"chain", b"key", b"roots")
    assert isinstance(certificate, secret_pb2.Secret)
    assert certificate.name == WORKLOAD_SECRET
    assert certificate.tls_certificate.certificate_chain.inline_bytes == b"chain"
    assert certificate.tls_certificate.private_key.inline_bytes == b"key"
    assert roots.name == ROOTS_SECRET
    assert roots.validation_context.trusted_ca.inline_bytes == b"roots"


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE"])
def test_spec_mtls_mode_is_parsed(mode: str) -> None:
    doc = _doc()
    doc["spec"]["mtls"] = {"mode": mode}
    assert parse_mesh_service(doc).mtls is MtlsMode(mode)


def test_spec_mtls_mode_defaults_to_strict_and_refuses_others() -> None:
    doc = _doc()
    assert parse_mesh_service(doc).mtls is MtlsMode.STRICT
    doc["spec"]["mtls"] = {"mode": "OFF"}
    with pytest.raises(InvalidResource, match=r"spec\.mtls\.mode: 'OFF' is not one of"):
        parse_mesh_service(doc)


def _doc() -> dict[str, Any]:
    return {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": "payments"},
        "spec": {"grpc": {"port": 50051, "services": ["grpcmesh.shop.v1.PaymentService"]}},
    }
