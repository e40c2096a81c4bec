"""Listeners: every one is an HTTP connection manager with the router filter; they differ in
address, direction and where their routes come from (inline for inbound, RDS otherwise)."""

from __future__ import annotations

from datetime import timedelta

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from grpcmesh_control.translate import _envoy as e
from grpcmesh_control.translate.naming import EGRESS, INBOUND, INGRESS, LOCALHOST, ProxyNode
from grpcmesh_control.translate.routes import inbound_route_config

__all__ = [
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


def _hcm(stat_prefix: str, *, edge: bool = False) -> hcm_pb2.HttpConnectionManager:
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
    )


def _rds(
    hcm: hcm_pb2.HttpConnectionManager, route_config_name: str
) -> hcm_pb2.HttpConnectionManager:
    hcm.rds.CopyFrom(hcm_pb2.Rds(config_source=e.ads_source(), route_config_name=route_config_name))
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


def inbound_listener(node: ProxyNode, app_port: int) -> e.listener_pb2.Listener:
    """``<bind>:<inbound port>`` -> the app; routes inline, they only change with the app port."""
    hcm = _hcm(INBOUND)
    hcm.route_config.CopyFrom(inbound_route_config(app_port))
    return _listener(INBOUND, node.bind_address, node.inbound_port, hcm, Direction.INBOUND)


def egress_listener(node: ProxyNode) -> e.listener_pb2.Listener:
    """``127.0.0.1:<egress port>``: only the local app may send through its sidecar."""
    hcm = _rds(_hcm(EGRESS), EGRESS)
    return _listener(EGRESS, LOCALHOST, node.egress_port, hcm, Direction.OUTBOUND)


def ingress_listener(node: ProxyNode) -> e.listener_pb2.Listener:
    hcm = _rds(_hcm(INGRESS, edge=True), INGRESS)
    return _listener(INGRESS, node.bind_address, node.ingress_port, hcm, Direction.INBOUND)
