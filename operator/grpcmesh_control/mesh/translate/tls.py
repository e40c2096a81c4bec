"""Mutual TLS between sidecars: the Envoy TLS contexts and the SDS secrets they name (pure).

With ``MeshTls`` set (the control plane holds a mesh CA), every sidecar's inbound listener
terminates TLS and requires a client certificate that chains to the mesh roots and names a
SPIFFE ID of the mesh's trust domain; every cluster to a MeshService version originates TLS
with the node's own certificate and accepts only the server whose URI SAN is exactly the
identity of the service it meant to call (``workload_identity``). The ingress gateway's
clusters are the same clusters, so it originates mTLS into the mesh too.

Certificates reach Envoy over SDS on the node's ADS stream, never as files: two secrets per
node, ``WORKLOAD_SECRET`` (its chain and key) and ``ROOTS_SECRET`` (the trust bundle). The
contexts here only name them, so they are the same for every node and stay in the shared
group snapshots; the secrets themselves are per node (``workload_secrets``).

The ingress gateway's own listener faces outside clients: with ``GatewayTls`` it serves TLS
with a configured server certificate (``GATEWAY_CERTIFICATE_SECRET``, also over SDS, from the
control plane that read it from files or a Kubernetes Secret), ALPN ``h2`` and ``http/1.1``,
TLS 1.2 at least, and, when asked, requires a client certificate from
``GATEWAY_CLIENT_ROOTS_SECRET``; without it, the listener stays plaintext.

``MtlsMode.PERMISSIVE`` (per MeshService, for migration) adds a plaintext filter chain beside
the TLS one on that service's inbound listener: a TLS inspector tells them apart by the
transport protocol of each connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from grpcmesh_control.mesh.model.identity import DEFAULT_TRUST_DOMAIN, LOCAL_NAMESPACE, SpiffeId
from grpcmesh_control.mesh.translate import _envoy as e

__all__ = [
    "ALPN",
    "GATEWAY_ALPN",
    "GATEWAY_CERTIFICATE_SECRET",
    "GATEWAY_CLIENT_ROOTS_SECRET",
    "ROOTS_SECRET",
    "TLS_INSPECTOR",
    "TLS_TRANSPORT_SOCKET",
    "WORKLOAD_SECRET",
    "GatewayTls",
    "MeshTls",
    "downstream_transport_socket",
    "gateway_secrets",
    "gateway_transport_socket",
    "tls_inspector",
    "upstream_transport_socket",
    "workload_secrets",
]

WORKLOAD_SECRET = "workload"
"""The node's own certificate chain and private key (an SDS ``tls_certificate``)."""
ROOTS_SECRET = "mesh-roots"
"""The roots the node trusts (an SDS ``validation_context``)."""
ALPN = ("h2",)
GATEWAY_CERTIFICATE_SECRET = "gateway-certificate"
"""The gateway's server certificate chain and key for outside clients (``tls_certificate``)."""
GATEWAY_CLIENT_ROOTS_SECRET = "gateway-client-roots"
"""The CAs outside clients' certificates must chain to (with
``GatewayTls.require_client_certificate``)."""
GATEWAY_ALPN = ("h2", "http/1.1")
"""gRPC clients negotiate h2; HTTP/1.1 stays for a curl at the edge (the HCM's codec is AUTO)."""
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"

_Common = e.tls_pb2.CommonTlsContext
_SanType = e.tls_common_pb2.SubjectAltNameMatcher.SanType


@dataclass(frozen=True)
class MeshTls:
    """The mesh speaks mTLS between sidecars; identities live in ``trust_domain``."""

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    ingress_namespace: str = LOCAL_NAMESPACE
    """Where the ingress gateway runs: its identity is ``ingress_identity`` there."""
    plaintext_health_probes: bool = False
    """Whether a STRICT inbound listener also takes plaintext calls of the gRPC health check
    (``/grpc.health.v1.Health/Check``, nothing else, no authorization: the caller has no
    identity): in a cluster the kubelet probes the app through the inbound port and cannot
    present a mesh certificate (``cluster.objects.pod``). Off locally, where probes reach the
    app directly."""

    @property
    def peer_prefix(self) -> str:
        """Every identity of this trust domain starts so (``spiffe://<td>/``)."""
        return f"spiffe://{self.trust_domain}/"


@dataclass(frozen=True)
class GatewayTls:
    """The ingress gateway serves TLS to outside clients (its certificate over SDS)."""

    require_client_certificate: bool = False
    """Outside clients must present a certificate from the configured client CAs (mTLS at the
    edge); False: any client that trusts the gateway's certificate may connect."""


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=e.ads_source())


def _uri_matcher(
    matcher: e.string_matcher_pb2.StringMatcher,
) -> e.tls_common_pb2.SubjectAltNameMatcher:
    return e.tls_common_pb2.SubjectAltNameMatcher(san_type=_SanType.URI, matcher=matcher)


def _common(peer: e.tls_common_pb2.SubjectAltNameMatcher) -> e.tls_pb2.CommonTlsContext:
    """The node's certificate and the mesh roots from SDS, the peer checked by its URI SAN."""
    return _Common(
        alpn_protocols=list(ALPN),
        tls_certificate_sds_secret_configs=[_sds(WORKLOAD_SECRET)],
        combined_validation_context=_Common.CombinedCertificateValidationContext(
            default_validation_context=e.tls_common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=[peer]
            ),
            validation_context_sds_secret_config=_sds(ROOTS_SECRET),
        ),
    )


def _socket(
    context: e.tls_pb2.UpstreamTlsContext | e.tls_pb2.DownstreamTlsContext,
) -> e.base_pb2.TransportSocket:
    return e.base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=e.pack(context))


def downstream_transport_socket(tls: MeshTls) -> e.base_pb2.TransportSocket:
    """A sidecar's inbound side: a client certificate is required, from the mesh roots, naming
    an identity of the mesh's trust domain (which one may call what is authorization's job)."""
    peer = _uri_matcher(e.string_matcher_pb2.StringMatcher(prefix=tls.peer_prefix))
    context = e.tls_pb2.DownstreamTlsContext(
        common_tls_context=_common(peer),
        require_client_certificate=e.wrappers_pb2.BoolValue(value=True),
    )
    return _socket(context)


def upstream_transport_socket(server: SpiffeId) -> e.base_pb2.TransportSocket:
    """A cluster to ``server``'s workload: mTLS with the node's certificate; the server must
    present exactly ``server``'s identity."""
    peer = _uri_matcher(e.string_matcher_pb2.StringMatcher(exact=server.uri))
    common = _common(peer)
    # Envoy's client side stops at TLS 1.2 unless told; both ends are ours, so sidecars speak
    # TLS 1.3 (and its hybrid post-quantum key exchange): a full handshake measured the same
    # CPU as 1.2 (docs/benchmarks.md, mTLS handshake).
    params = e.tls_common_pb2.TlsParameters
    common.tls_params.CopyFrom(
        params(
            tls_minimum_protocol_version=params.TlsProtocol.TLSv1_2,
            tls_maximum_protocol_version=params.TlsProtocol.TLSv1_3,
        )
    )
    return _socket(e.tls_pb2.UpstreamTlsContext(common_tls_context=common))


def gateway_transport_socket(gateway: GatewayTls) -> e.base_pb2.TransportSocket:
    """The ingress listener's TLS for outside clients: the gateway's server certificate from
    SDS, TLS 1.2 or newer, ALPN ``GATEWAY_ALPN``; a client certificate verified against
    ``GATEWAY_CLIENT_ROOTS_SECRET`` and required when ``gateway`` says so."""
    params = e.tls_common_pb2.TlsParameters
    common = _Common(
        alpn_protocols=list(GATEWAY_ALPN),
        tls_params=params(tls_minimum_protocol_version=params.TlsProtocol.TLSv1_2),
        tls_certificate_sds_secret_configs=[_sds(GATEWAY_CERTIFICATE_SECRET)],
    )
    context = e.tls_pb2.DownstreamTlsContext(common_tls_context=common)
    if gateway.require_client_certificate:
        context.common_tls_context.validation_context_sds_secret_config.CopyFrom(
            _sds(GATEWAY_CLIENT_ROOTS_SECRET)
        )
        context.require_client_certificate.value = True
    return _socket(context)


def gateway_secrets(
    cert_chain_pem: bytes, key_pem: bytes, client_roots_pem: bytes | None = None
) -> list[secret_pb2.Secret]:
    """The gateway's SDS secrets: ``GATEWAY_CERTIFICATE_SECRET`` (chain and key) and, with
    ``client_roots_pem``, ``GATEWAY_CLIENT_ROOTS_SECRET``."""
    secrets = [
        secret_pb2.Secret(
            name=GATEWAY_CERTIFICATE_SECRET,
            tls_certificate=e.tls_common_pb2.TlsCertificate(
                certificate_chain=e.base_pb2.DataSource(inline_bytes=cert_chain_pem),
                private_key=e.base_pb2.DataSource(inline_bytes=key_pem),
            ),
        )
    ]
    if client_roots_pem is not None:
        secrets.append(
            secret_pb2.Secret(
                name=GATEWAY_CLIENT_ROOTS_SECRET,
                validation_context=e.tls_common_pb2.CertificateValidationContext(
                    trusted_ca=e.base_pb2.DataSource(inline_bytes=client_roots_pem)
                ),
            )
        )
    return secrets


def tls_inspector() -> e.listener_components_pb2.ListenerFilter:
    """Sets a connection's transport protocol (``tls`` or ``raw_buffer``) for filter chain
    matching (PERMISSIVE)."""
    return e.listener_components_pb2.ListenerFilter(
        name=TLS_INSPECTOR, typed_config=e.pack(tls_inspector_pb2.TlsInspector())
    )


def workload_secrets(
    cert_chain_pem: bytes, key_pem: bytes, roots_pem: bytes
) -> tuple[secret_pb2.Secret, secret_pb2.Secret]:
    """The node's two SDS secrets: ``WORKLOAD_SECRET`` (leaf first, then its chain; the key)
    and ``ROOTS_SECRET`` (the trust bundle)."""
    certificate = secret_pb2.Secret(
        name=WORKLOAD_SECRET,
        tls_certificate=e.tls_common_pb2.TlsCertificate(
            certificate_chain=e.base_pb2.DataSource(inline_bytes=cert_chain_pem),
            private_key=e.base_pb2.DataSource(inline_bytes=key_pem),
        ),
    )
    roots = secret_pb2.Secret(
        name=ROOTS_SECRET,
        validation_context=e.tls_common_pb2.CertificateValidationContext(
            trusted_ca=e.base_pb2.DataSource(inline_bytes=roots_pem)
        ),
    )
    return certificate, roots
