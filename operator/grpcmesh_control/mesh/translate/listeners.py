"""Listeners: every one is an HTTP connection manager with the router filter; they differ in
address, direction and where their routes come from (inline for inbound, RDS otherwise).

Observability, per node (``ProxyNode``): with ``otlp_collector`` set, every HCM traces with
Envoy's OpenTelemetry tracer (spans over OTLP/gRPC to the ``otlp_collector`` cluster), which
continues an incoming W3C ``traceparent`` or starts a trace, and passes its own span on
upstream. ``random_sampling`` is the node's ``trace_sampling`` (the mesh-wide ratio the kit uses
too); Envoy draws it from the ``x-request-id``, which every hop forwards, so all the proxies
of one request decide alike and the services follow the ``traceparent`` flag they set. With
``access_log``, one JSON line per request on stdout carrying the trace id, the ``traceparent``
and ``x-request-id``.
"""

from __future__ import annotations

from datetime import timedelta

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import grpc_service_pb2, substitution_format_string_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2

from grpcmesh_control.mesh.model.mesh import MtlsMode
from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.naming import (
    EGRESS,
    INBOUND,
    INGRESS,
    OTLP_COLLECTOR_CLUSTER,
    ProxyNode,
)
from grpcmesh_control.mesh.translate.routes import (
    FAULT_FILTER,
    NOT_DELIVERED_HEADER,
    InboundDeadline,
    inbound_route_config,
)
from grpcmesh_control.mesh.translate.tls import (
    GatewayTls,
    MeshTls,
    downstream_transport_socket,
    gateway_transport_socket,
    tls_inspector,
)

__all__ = [
    "ACCESS_LOG_FORMAT",
    "HCM_FILTER",
    "ROUTER_FILTER",
    "STREAM_IDLE_TIMEOUT",
    "egress_listener",
    "inbound_listener",
    "ingress_listener",
]

HCM = hcm_pb2.HttpConnectionManager
HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
# A server-streaming call (WatchOrder) may legitimately send nothing for as long as a saga
# waits; Envoy's 5 min default would reset it. Dead peers are found by HTTP/2 keepalive and
# deadlines by grpc-timeout (routes.honour_grpc_timeout), so idleness only has to catch leaks.
STREAM_IDLE_TIMEOUT = timedelta(hours=1)
Direction = e.base_pb2.TrafficDirection
OTLP_EXPORT_TIMEOUT = timedelta(seconds=1)
ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "authority": "%REQ(:AUTHORITY)%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS(NUMBER)%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
    "trace_id": "%TRACE_ID%",
}
"""One JSON object per request; ``trace_id`` is the tracer's (empty without one), and
``traceparent`` the header as forwarded, so a log line joins its trace either way."""


def _tracing(node: ProxyNode) -> hcm_pb2.HttpConnectionManager.Tracing:
    tracer = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=OTLP_COLLECTOR_CLUSTER),
            timeout=e.duration(OTLP_EXPORT_TIMEOUT),
        ),
        # The MeshService (or "ingress"): a sidecar's spans sit with its app's in a trace view.
        service_name=node.id.envoy_cluster,
    )
    return HCM.Tracing(
        provider=http_tracer_pb2.Tracing.Http(
            name="envoy.tracers.opentelemetry", typed_config=e.pack(tracer)
        ),
        random_sampling=percent_pb2.Percent(value=node.trace_sampling * 100),
    )


def _access_log(stat_prefix: str) -> accesslog_pb2.AccessLog:
    fields = struct_pb2.Struct()
    fields.update({"listener": stat_prefix, **ACCESS_LOG_FORMAT})
    stdout = stream_pb2.StdoutAccessLog(
        log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=fields)
    )
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.stdout", typed_config=e.pack(stdout))


def _hcm(stat_prefix: str, node: ProxyNode, *, edge: bool = False) -> hcm_pb2.HttpConnectionManager:
    hcm = _plain_hcm(stat_prefix, edge=edge)
    if node.otlp_collector is not None:
        hcm.tracing.CopyFrom(_tracing(node))
    if node.access_log:
        hcm.access_log.append(_access_log(stat_prefix))
    return hcm


def _per_try_timeout_is_a_deadline() -> hcm_pb2.LocalReplyConfig:
    """When per-try timeouts use up a call's attempts, Envoy answers HTTP 504 with the flag UT
    (upstream request timeout), which a gRPC caller reads as UNAVAILABLE: "never ran, retry
    me". The server did not answer in time, so the caller gets DEADLINE_EXCEEDED, as it does
    when the route's own bound passes. (The route ``timeout`` is never what sets UT here: with
    ``max_stream_duration`` set, Envoy ignores it, see ``routes.honour_grpc_timeout``.)"""
    return hcm_pb2.LocalReplyConfig(
        mappers=[
            hcm_pb2.ResponseMapper(
                filter=accesslog_pb2.AccessLogFilter(
                    response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=["UT"])
                ),
                headers_to_add=[
                    e.base_pb2.HeaderValueOption(
                        header=e.base_pb2.HeaderValue(key="grpc-status", value="4"),
                        append_action=e.base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                ],
            )
        ]
    )


def _plain_hcm(stat_prefix: str, *, edge: bool = False) -> hcm_pb2.HttpConnectionManager:
    return HCM(
        stat_prefix=stat_prefix,
        # AUTO serves HTTP/2 with prior knowledge (what gRPC clients send in plaintext) and
        # HTTP/1.1 for anything else (curl against a health path, say).
        codec_type=HCM.CodecType.AUTO,
        http_filters=[
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=e.pack(e.router_pb2.Router()))
        ],
        # Only the ingress faces clients directly; sidecars must keep the caller's XFF.
        use_remote_address=e.wrappers_pb2.BoolValue(value=edge),
        stream_idle_timeout=e.duration(STREAM_IDLE_TIMEOUT),
        local_reply_config=_per_try_timeout_is_a_deadline(),
    )


def _rds(
    hcm: hcm_pb2.HttpConnectionManager, route_config_name: str
) -> hcm_pb2.HttpConnectionManager:
    """Routes from RDS: the mesh's service routes, which may inject faults, so the fault filter
    goes before the router (with no config of its own it does nothing)."""
    hcm.rds.CopyFrom(hcm_pb2.Rds(config_source=e.ads_source(), route_config_name=route_config_name))
    hcm.http_filters.insert(
        0, hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=e.pack(fault_pb2.HTTPFault()))
    )
    return hcm


def _listener(
    name: str, address: str, port: int, hcm: hcm_pb2.HttpConnectionManager, direction: int
) -> e.listener_pb2.Listener:
    return e.listener_pb2.Listener(
        name=name,
        address=e.socket_address(address, port),
        traffic_direction=direction,
        filter_chains=[
            e.listener_components_pb2.FilterChain(
                filters=[
                    e.listener_components_pb2.Filter(name=HCM_FILTER, typed_config=e.pack(hcm))
                ]
            )
        ],
    )


NOT_DELIVERED_FLAGS = ("UF", "UH", "UO")
"""Envoy response flags of a local reply sent before the request reached the app: the
connection to it failed (UF: the app is down), no healthy app (UH), the circuit breaker (UO)."""


def _not_delivered_marker() -> hcm_pb2.ResponseMapper:
    """Local replies that mean "your request never reached my app" carry
    ``NOT_DELIVERED_HEADER``, which every caller's route retries (routes.retry_policy): a dead
    app behind a live sidecar costs its callers a retry on another endpoint, not a failure."""
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=list(NOT_DELIVERED_FLAGS))
        ),
        headers_to_add=[
            e.base_pb2.HeaderValueOption(
                header=e.base_pb2.HeaderValue(key=NOT_DELIVERED_HEADER, value="true"),
                append_action=e.base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )


def inbound_listener(
    node: ProxyNode,
    app_port: int,
    tls: MeshTls | None = None,
    mode: MtlsMode = MtlsMode.STRICT,
    authorization: hcm_pb2.HttpFilter | None = None,
    deadlines: tuple[InboundDeadline, ...] = (),
) -> e.listener_pb2.Listener:
    """``<bind>:<inbound port>`` -> the app; routes inline, they change only with the app port
    and the service's route deadlines (``routes.inbound_route_config``).

    With ``tls``: mutual TLS required (``tls.downstream_transport_socket``); PERMISSIVE keeps a
    plaintext chain beside it, chosen per connection by the TLS inspector. ``authorization``
    (``translate.authorization``) decides who may call, before the router."""
    hcm = _hcm(INBOUND, node)
    if authorization is not None:
        hcm.http_filters.insert(0, authorization)
    hcm.route_config.CopyFrom(inbound_route_config(app_port, deadlines))
    hcm.local_reply_config.mappers.append(_not_delivered_marker())
    listener = _listener(INBOUND, node.bind_address, node.inbound_port, hcm, Direction.INBOUND)
    if tls is None:
        return listener
    secure = listener.filter_chains[0]
    secure.transport_socket.CopyFrom(downstream_transport_socket(tls))
    if mode is MtlsMode.PERMISSIVE or tls.plaintext_health_probes:
        Match = e.listener_components_pb2.FilterChainMatch
        plain = listener.filter_chains.add()
        plain.CopyFrom(secure)
        plain.ClearField("transport_socket")
        if mode is not MtlsMode.PERMISSIVE:  # STRICT: plaintext reaches the health check only
            plain.filters[0].typed_config.Pack(_health_only(node, app_port))
        secure.filter_chain_match.CopyFrom(Match(transport_protocol="tls"))
        plain.filter_chain_match.CopyFrom(Match(transport_protocol="raw_buffer"))
        listener.listener_filters.append(tls_inspector())
    return listener


HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"


def _health_only(node: ProxyNode, app_port: int) -> hcm_pb2.HttpConnectionManager:
    """The inbound connection manager for plaintext callers of a STRICT listener (the
    kubelet's probes, ``MeshTls.plaintext_health_probes``): the app's gRPC health check and
    nothing else (any other path: 404, which gRPC reports UNIMPLEMENTED)."""
    hcm = _hcm(INBOUND, node)
    routes = inbound_route_config(app_port)
    for host in routes.virtual_hosts:
        for item in host.routes:
            item.match.ClearField("prefix")
            item.match.path = HEALTH_CHECK_PATH
    hcm.route_config.CopyFrom(routes)
    hcm.local_reply_config.mappers.append(_not_delivered_marker())
    return hcm


def egress_listener(node: ProxyNode) -> e.listener_pb2.Listener:
    """``<local address>:<egress port>`` (127.0.0.1 in a pod): only the local app may send
    through its sidecar."""
    hcm = _rds(_hcm(EGRESS, node), EGRESS)
    return _listener(EGRESS, node.local_address, node.egress_port, hcm, Direction.OUTBOUND)


def ingress_listener(node: ProxyNode, gateway: GatewayTls | None = None) -> e.listener_pb2.Listener:
    """``<bind>:<ingress port>``, routes from RDS ``ingress``; with ``gateway``, TLS (and
    maybe client certificates) for outside clients (``tls.gateway_transport_socket``), else
    plaintext."""
    hcm = _rds(_hcm(INGRESS, node, edge=True), INGRESS)
    listener = _listener(INGRESS, node.bind_address, node.ingress_port, hcm, Direction.INBOUND)
    if gateway is not None:
        listener.filter_chains[0].transport_socket.CopyFrom(gateway_transport_socket(gateway))
    return listener
