"""Envoy bootstrap for a mesh node, and the command line to run it.

The bootstrap holds only what cannot come over xDS: the node's identity (id, cluster, the port
metadata ``translate.naming.ProxyNode.from_node`` reads), the admin interface (127.0.0.1 only:
it can change config and quit the process), and how to reach the control plane (ADS over one
HTTP/2 gRPC stream, listeners and clusters from it). Everything else is pushed over ADS.

Built as a ``Bootstrap`` message and converted to a dict, so a misspelt field fails here, not
in Envoy. Write it as YAML or JSON (the operator puts it in a ConfigMap; local mode in a file).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import json_format, struct_pb2

from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.naming import LOCALHOST
from grpcmesh_control.mesh.translate.tls import TLS_TRANSPORT_SOCKET

__all__ = [
    "ADMIN_CLUSTER",
    "ADMIN_SOCKET_MODE",
    "READ_ONLY_PATHS",
    "SUBJECT_TOKEN_TYPE_JWT",
    "XDS_CLUSTER",
    "XDS_ROOTS_SECRET",
    "XdsTokenExchange",
    "XdsTransport",
    "envoy_command",
    "render_bootstrap",
    "render_local_overlay",
    "split_host_port",
    "xds_cluster",
    "xds_roots_sds_document",
]

XDS_CLUSTER = "xds_cluster"
ADMIN_CLUSTER = "admin"
# Admin paths the health listener exposes: readiness (LIVE only once the initial xDS config is
# applied, which gates the pod on its proxy) and Prometheus stats. Nothing that mutates.
HEALTH_PATHS = ("/ready", "/stats/prometheus")
READ_ONLY_PATHS = (*HEALTH_PATHS, "/stats")
"""What local mode's TCP admin port serves (its tooling reads ``/stats``); the whole admin
interface, mutations included, is then only on the node's unix socket."""
ADMIN_SOCKET_MODE = 0o600
"""The admin socket's permissions: its owner (who started the mesh) alone may connect."""
DEFAULT_MAX_DOWNSTREAM_CONNECTIONS = 50_000

Cluster = e.cluster_pb2.Cluster


SUBJECT_TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
"""RFC 8693's type of a Kubernetes ServiceAccount token (a JWT)."""
XDS_STAT_PREFIX = "xds_grpc"


@dataclass(frozen=True)
class XdsTokenExchange:
    """How a node in a cluster proves itself on its ADS stream (``render_bootstrap``): over TLS
    verified against the mesh root (public: ``trusted_ca_pem`` inline, or the file
    ``trusted_ca_file``), with call credentials from an RFC 8693 token exchange (gRPC's STS
    credentials): ``subject_token_path`` (the kubelet-rotated projected ServiceAccount token)
    is re-read and exchanged at ``token_exchange_uri`` for the bearer token sent on the
    stream."""

    token_exchange_uri: str
    subject_token_path: str
    audience: str
    trusted_ca_pem: str | None = None
    trusted_ca_file: str | None = None

    def __post_init__(self) -> None:
        if (self.trusted_ca_pem is None) == (self.trusted_ca_file is None):
            raise ValueError("XdsTokenExchange: give trusted_ca_pem or trusted_ca_file")

    def trusted_ca(self) -> e.base_pb2.DataSource:
        if self.trusted_ca_file is not None:
            return e.base_pb2.DataSource(filename=self.trusted_ca_file)
        return e.base_pb2.DataSource(inline_string=self.trusted_ca_pem)


class XdsTransport(StrEnum):
    """The ADS flavour a node speaks (Envoy's ``api_type``); the control plane serves both."""

    SOTW = "GRPC"
    """State of the world: every response carries every resource of its type."""
    DELTA = "DELTA_GRPC"
    """Incremental: only changed and removed resources; the default for every proxy."""


def render_bootstrap(
    node_id: str,
    cluster: str,
    xds_address: str,
    admin_port: int,
    *,
    node_metadata: Mapping[str, Any] | None = None,
    health_port: int | None = None,
    bind_address: str = "0.0.0.0",
    local_address: str = LOCALHOST,
    xds_connect_timeout: timedelta = timedelta(seconds=1),
    max_downstream_connections: int = DEFAULT_MAX_DOWNSTREAM_CONNECTIONS,
    xds_transport: XdsTransport = XdsTransport.DELTA,
    admin_socket: Path | None = None,
    health_paths: tuple[str, ...] = HEALTH_PATHS,
    xds_metadata: Mapping[str, str] | None = None,
    xds_trusted_ca: Path | None = None,
    xds_roots_sds: Path | None = None,
    xds_token_exchange: XdsTokenExchange | None = None,
) -> dict[str, Any]:
    """The bootstrap as a dict (proto3 JSON field names).

    ``xds_address`` is ``host:port`` (``[v6]:port`` for IPv6); a DNS name is re-resolved, so
    the control plane can move. ``node_metadata`` is usually ``ProxyNode.metadata()``.
    ``health_port`` adds a static listener serving only ``HEALTH_PATHS`` from the admin
    interface, for kubelet probes and Prometheus (which cannot reach 127.0.0.1).
    ``xds_transport`` picks delta ADS (the default: a push carries only the resources that
    changed, so a change to one service costs each proxy one resource, not its whole
    configuration) or state of the world. ``local_address`` is
    where the admin interface listens (127.0.0.1: only the pod's own containers reach it).

    ``admin_socket`` (local mode, where every local user reaches 127.0.0.1) puts the admin
    interface on that unix socket instead, mode ``ADMIN_SOCKET_MODE``, and ``admin_port`` then
    serves only ``health_paths`` (with ``health_port`` unset): no other local user can reach
    ``/quitquitquit`` or any other mutation.

    ``xds_metadata`` is sent as call metadata on every ADS stream (``initial_metadata``; the
    node's credential in local mode: the file must then be private). ``xds_trusted_ca`` (a PEM
    file) makes the ADS connection TLS, verifying the control plane's certificate against it
    and its name (an IP SAN for an IP address) against the host of ``xds_address``. With
    ``xds_roots_sds`` (a file holding ``xds_roots_sds_document(xds_trusted_ca)``), Envoy reads
    those roots through file-based SDS instead, which it watches: a root rotation replacing the
    PEM file (by a rename) changes what new ADS connections trust, without a restart.

    ``xds_token_exchange`` (a cluster's sidecars and gateway) makes the ADS service Envoy's
    ``google_grpc`` client instead of ``envoy_grpc``: only it has call credentials that re-read
    a rotating token file (``XdsTokenExchange``). It has its own connection (DNS through gRPC's
    resolver, stats under ``XDS_STAT_PREFIX``); ``xds_cluster`` stays, over TLS with the same
    trust, for what the ingress routes to the control plane (server reflection).
    """
    if xds_token_exchange is not None and (
        xds_metadata or xds_trusted_ca is not None or xds_roots_sds is not None
    ):
        raise ValueError("xds_token_exchange brings its own TLS and credential")
    host, port = split_host_port(xds_address)
    admin_address = e.socket_address(local_address, admin_port)
    if admin_socket is not None:
        if health_port is not None:
            raise ValueError("admin_socket makes admin_port the health port; leave health_port")
        admin_address = _pipe(admin_socket)
        health_port = admin_port
    metadata = struct_pb2.Struct()
    metadata.update(dict(node_metadata or {}))
    bootstrap = bootstrap_pb2.Bootstrap(
        node=e.base_pb2.Node(id=node_id, cluster=cluster, metadata=metadata),
        admin=bootstrap_pb2.Admin(address=admin_address),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=config_source_pb2.ApiConfigSource.ApiType.Value(xds_transport.value),
                transport_api_version=config_source_pb2.ApiVersion.V3,
                grpc_services=[
                    _google_grpc(xds_address, xds_token_exchange)
                    if xds_token_exchange is not None
                    else grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER),
                        initial_metadata=[
                            e.base_pb2.HeaderValue(key=key, value=value)
                            for key, value in sorted((xds_metadata or {}).items())
                        ],
                    )
                ],
                # The node never changes on a stream; sending it once saves bytes per request.
                set_node_on_first_message_only=True,
            ),
            cds_config=e.ads_source(),
            lds_config=e.ads_source(),
        ),
        overload_manager=_overload_manager(max_downstream_connections),
    )
    trust: e.base_pb2.DataSource | Path | None = xds_trusted_ca
    if xds_token_exchange is not None:
        trust = xds_token_exchange.trusted_ca()
    bootstrap.static_resources.clusters.append(
        xds_cluster(host, port, xds_connect_timeout, trusted_ca=trust, roots_sds=xds_roots_sds)
    )
    if health_port is not None:
        bootstrap.static_resources.clusters.append(_admin_cluster(admin_address))
        bootstrap.static_resources.listeners.append(
            _health_listener(bind_address, health_port, health_paths)
        )
    return json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)


def _google_grpc(xds_address: str, exchange: XdsTokenExchange) -> grpc_service_pb2.GrpcService:
    google = grpc_service_pb2.GrpcService.GoogleGrpc
    sts = google.CallCredentials.StsService(
        token_exchange_service_uri=exchange.token_exchange_uri,
        subject_token_path=exchange.subject_token_path,
        subject_token_type=SUBJECT_TOKEN_TYPE_JWT,
        audience=exchange.audience,
    )
    return grpc_service_pb2.GrpcService(
        google_grpc=google(
            # gRPC verifies the server's certificate names this host (DNS or IP SAN).
            target_uri=xds_address,
            channel_credentials=google.ChannelCredentials(
                ssl_credentials=google.SslCredentials(root_certs=exchange.trusted_ca())
            ),
            call_credentials=[google.CallCredentials(sts_service=sts)],
            stat_prefix=XDS_STAT_PREFIX,
        )
    )


UNIX_PATH_MAX = 107
"""Bytes in a unix socket path (sun_path holds 108 with its terminating NUL)."""


def _pipe(path: Path) -> e.address_pb2.Address:
    if len(str(path).encode()) > UNIX_PATH_MAX:
        raise ValueError(
            f"admin socket {path}: longer than the {UNIX_PATH_MAX} bytes a unix socket path "
            "may have; use a shorter state directory"
        )
    return e.address_pb2.Address(pipe=e.address_pb2.Pipe(path=str(path), mode=ADMIN_SOCKET_MODE))


def render_local_overlay(
    admin_port: int,
    *,
    local_address: str,
    node_metadata: Mapping[str, Any],
    health_port: int | None = None,
) -> dict[str, Any]:
    """The per-pod part of a bootstrap, for Envoy's ``--config-yaml``, which Envoy merges over
    the bootstrap file: the admin interface and the node metadata on ``local_address``, and
    (with ``health_port``) the health listener and its admin cluster, which the file must then
    leave out (repeated fields are appended by the merge, not replaced). For pods that share
    the host's network, where each pod's local address is its pod IP (``$(POD_IP)``)."""
    metadata = struct_pb2.Struct()
    metadata.update(dict(node_metadata))
    overlay = bootstrap_pb2.Bootstrap(
        node=e.base_pb2.Node(metadata=metadata),
        admin=bootstrap_pb2.Admin(address=e.socket_address(local_address, admin_port)),
    )
    if health_port is not None:
        overlay.static_resources.clusters.append(
            _admin_cluster(e.socket_address(local_address, admin_port))
        )
        overlay.static_resources.listeners.append(
            _health_listener(local_address, health_port, HEALTH_PATHS)
        )
    document = json_format.MessageToDict(overlay, preserving_proto_field_name=True)
    return {key: _whole_numbers(value) for key, value in document.items()}


def _whole_numbers(value: Any) -> Any:
    """``value`` with integral floats as ints. Struct numbers are doubles (a port is 15006.0),
    and Envoy reads ``--config-yaml`` as YAML, where it keeps ``15006.0`` in a Struct as the
    string "15006.0" (measured with 1.40); ``15006`` stays a number."""
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def envoy_command(
    config_path: Path | str,
    *,
    envoy: Path | str = "envoy",
    concurrency: int = 2,
    log_level: str = "info",
    base_id: int | None = None,
) -> list[str]:
    """The recommended command line.

    ``--disable-hot-restart``: with hot restart on, Envoy exits with the process that started
    it, and two Envoys on one host collide on base id 0. ``--concurrency``: one worker per
    core Envoy may use (the default is every core of the machine, too many for a sidecar).
    """
    command = [
        str(envoy),
        "-c",
        str(config_path),
        "--disable-hot-restart",
        "--concurrency",
        str(concurrency),
        "--log-level",
        log_level,
    ]
    if base_id is not None:
        command += ["--base-id", str(base_id)]
    return command


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"xds_address {address!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def xds_cluster(
    host: str,
    port: int,
    connect_timeout: timedelta,
    *,
    trusted_ca: Path | e.base_pb2.DataSource | None = None,
    roots_sds: Path | None = None,
) -> e.cluster_pb2.Cluster:
    """The control plane's cluster; with ``trusted_ca`` (a PEM file, or the PEM itself as a
    ``DataSource``), over TLS (see ``render_bootstrap``)."""
    keepalive = e.protocol_pb2.KeepaliveSettings(
        # Detect a dead control plane (or a silently dropped connection) within ~35 s.
        interval=e.duration(timedelta(seconds=30)),
        timeout=e.duration(timedelta(seconds=5)),
    )
    cluster = Cluster(
        name=XDS_CLUSTER,
        type=Cluster.DiscoveryType.STATIC if _is_ip(host) else Cluster.DiscoveryType.STRICT_DNS,
        connect_timeout=e.duration(connect_timeout),
        load_assignment=_single_host(XDS_CLUSTER, host, port),
        typed_extension_protocol_options=e.http2_upstream_options(keepalive),
    )
    if trusted_ca is not None:
        cluster.transport_socket.CopyFrom(_xds_tls(host, trusted_ca, roots_sds))
    return cluster


XDS_ROOTS_SECRET = "xds-roots"
"""The file-based SDS secret naming the roots the xDS server's certificate is checked with."""


def xds_roots_sds_document(trusted_ca: Path) -> dict[str, Any]:
    """The file-based SDS document ``render_bootstrap``'s ``xds_roots_sds`` names: one
    validation context secret whose ``trusted_ca`` is the PEM file ``trusted_ca``. Envoy
    watches both this file and ``trusted_ca`` for moves (replace them by renaming)."""
    secret = secret_pb2.Secret(
        name=XDS_ROOTS_SECRET,
        validation_context=e.tls_common_pb2.CertificateValidationContext(
            trusted_ca=e.base_pb2.DataSource(filename=str(trusted_ca))
        ),
    )
    packed = json_format.MessageToDict(e.pack(secret), preserving_proto_field_name=True)
    return {"resources": [packed]}


def _xds_tls(
    host: str, trusted_ca: Path | e.base_pb2.DataSource, roots_sds: Path | None
) -> e.base_pb2.TransportSocket:
    if isinstance(trusted_ca, Path):
        trusted_ca = e.base_pb2.DataSource(filename=str(trusted_ca))
    san = e.tls_common_pb2.SubjectAltNameMatcher
    name = san(
        san_type=san.SanType.IP_ADDRESS if _is_ip(host) else san.SanType.DNS,
        matcher=e.string_matcher_pb2.StringMatcher(exact=host),
    )
    common = e.tls_pb2.CommonTlsContext(alpn_protocols=["h2"])
    if roots_sds is None:
        common.validation_context.CopyFrom(
            e.tls_common_pb2.CertificateValidationContext(
                trusted_ca=trusted_ca,
                match_typed_subject_alt_names=[name],
            )
        )
    else:
        combined = common.combined_validation_context
        combined.default_validation_context.match_typed_subject_alt_names.append(name)
        combined.validation_context_sds_secret_config.CopyFrom(
            secret_pb2.SdsSecretConfig(
                name=XDS_ROOTS_SECRET,
                sds_config=config_source_pb2.ConfigSource(
                    path_config_source=config_source_pb2.PathConfigSource(path=str(roots_sds)),
                    resource_api_version=config_source_pb2.ApiVersion.V3,
                ),
            )
        )
    context = e.tls_pb2.UpstreamTlsContext(
        common_tls_context=common, sni="" if _is_ip(host) else host
    )
    return e.base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=e.pack(context))


def _admin_cluster(admin: e.address_pb2.Address) -> e.cluster_pb2.Cluster:
    assignment = e.endpoint_pb2.ClusterLoadAssignment(cluster_name=ADMIN_CLUSTER)
    assignment.endpoints.add().lb_endpoints.append(
        e.endpoint_components_pb2.LbEndpoint(
            endpoint=e.endpoint_components_pb2.Endpoint(address=admin)
        )
    )
    return Cluster(
        name=ADMIN_CLUSTER,
        type=Cluster.DiscoveryType.STATIC,
        connect_timeout=e.duration(timedelta(seconds=1)),
        load_assignment=assignment,
    )


def _single_host(name: str, host: str, port: int) -> e.endpoint_pb2.ClusterLoadAssignment:
    endpoint = e.endpoint_components_pb2.LbEndpoint(
        endpoint=e.endpoint_components_pb2.Endpoint(address=e.socket_address(host, port))
    )
    assignment = e.endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    assignment.endpoints.add().lb_endpoints.append(endpoint)
    return assignment


def _health_listener(
    bind_address: str, port: int, paths: tuple[str, ...]
) -> e.listener_pb2.Listener:
    route = e.route_components_pb2
    # Exact paths (the query string aside: /stats?filter=... matches /stats); anything else,
    # /quitquitquit included, is a 404 from this listener.
    routes = [
        route.Route(
            match=route.RouteMatch(path=path),
            route=route.RouteAction(cluster=ADMIN_CLUSTER),
        )
        for path in paths
    ]
    hcm = e.http_connection_manager_pb2.HttpConnectionManager(
        stat_prefix="health",
        codec_type=e.http_connection_manager_pb2.HttpConnectionManager.CodecType.AUTO,
        route_config=e.route_pb2.RouteConfiguration(
            name="health",
            virtual_hosts=[route.VirtualHost(name="health", domains=["*"], routes=routes)],
        ),
        http_filters=[
            e.http_connection_manager_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=e.pack(e.router_pb2.Router())
            )
        ],
    )
    return e.listener_pb2.Listener(
        name="health",
        address=e.socket_address(bind_address, port),
        filter_chains=[
            e.listener_components_pb2.FilterChain(
                filters=[
                    e.listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=e.pack(hcm),
                    )
                ]
            )
        ],
    )


def _overload_manager(max_connections: int) -> overload_pb2.OverloadManager:
    # A global cap on downstream connections; without one Envoy warns at start and a
    # connection flood can exhaust file descriptors.
    config = downstream_connections_pb2.DownstreamConnectionsConfig(
        max_active_downstream_connections=max_connections
    )
    return overload_pb2.OverloadManager(
        resource_monitors=[
            overload_pb2.ResourceMonitor(
                name="envoy.resource_monitors.global_downstream_max_connections",
                typed_config=e.pack(config),
            )
        ]
    )
