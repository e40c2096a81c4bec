"""Read helpers over snapshots, so tests assert on behaviour, not on message plumbing."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from grpcmesh_control.mesh.translate import Snapshot


def hcm(listener: listener_pb2.Listener) -> Any:
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def listener(snapshot: Snapshot, name: str) -> Any:
    return next(item for item in snapshot.listeners if item.name == name)


def route_config(snapshot: Snapshot, name: str) -> route_pb2.RouteConfiguration:
    return next(item for item in snapshot.routes if item.name == name)


def virtual_host(config: route_pb2.RouteConfiguration, name: str) -> Any:
    return next(host for host in config.virtual_hosts if host.name == name)


def route(host: route_components_pb2.VirtualHost, path: str) -> Any:
    """The route Envoy would pick for a request to ``path`` (first match wins)."""
    for candidate in host.routes:
        match = candidate.match
        if match.path == path or (match.prefix and path.startswith(match.prefix)):
            return candidate
    raise AssertionError(f"no route matches {path}")


def cluster(snapshot: Snapshot, name: str) -> Any:
    return next(item for item in snapshot.clusters if item.name == name)


def speaks_http2(item: cluster_pb2.Cluster) -> bool:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    packed = item.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    packed.Unpack(options)
    return bool(options.explicit_http_config.HasField("http2_protocol_options"))
