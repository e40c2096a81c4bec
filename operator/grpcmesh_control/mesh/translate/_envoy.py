"""The Envoy API modules the translator uses, and small builders shared by its modules.

Importing the extension modules (HTTP connection manager, router, upstream HTTP protocol
options, previous-hosts retry predicate, TLS) registers their types in the default descriptor
pool; without that, ``Any.Pack``-ed configs cannot be parsed back or printed as JSON.
"""

from __future__ import annotations

from datetime import timedelta

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2 as previous_priorities_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2 as string_matcher_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2

__all__ = [
    "HTTP_PROTOCOL_OPTIONS_KEY",
    "address_pb2",
    "ads_source",
    "base_pb2",
    "circuit_breaker_pb2",
    "cluster_pb2",
    "config_source_pb2",
    "duration",
    "endpoint_components_pb2",
    "endpoint_pb2",
    "health_check_pb2",
    "http2_upstream_options",
    "http_connection_manager_pb2",
    "listener_components_pb2",
    "listener_pb2",
    "outlier_detection_pb2",
    "pack",
    "percent_pb2",
    "previous_hosts_pb2",
    "previous_priorities_pb2",
    "protocol_pb2",
    "route_components_pb2",
    "route_pb2",
    "router_pb2",
    "socket_address",
    "string_matcher_pb2",
    "tls_common_pb2",
    "tls_pb2",
    "u32",
    "wrappers_pb2",
]

HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def pack(msg: message.Message) -> any_pb2.Any:
    """``Any`` with deterministic inner bytes, so equal configs hash equal (snapshot versions)."""
    packed = any_pb2.Any()
    packed.Pack(msg, deterministic=True)
    return packed


def duration(value: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def ads_source() -> config_source_pb2.ConfigSource:
    """Fetch over the node's one ADS stream (declared in its bootstrap)."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def http2_upstream_options(
    keepalive: protocol_pb2.KeepaliveSettings | None = None,
    max_concurrent_streams: int | None = None,
) -> dict[str, any_pb2.Any]:
    """``typed_extension_protocol_options`` making a cluster speak HTTP/2 (gRPC needs it);
    ``max_concurrent_streams`` caps the calls Envoy multiplexes on one connection (past it, it
    opens another)."""
    http2 = protocol_pb2.Http2ProtocolOptions()
    if keepalive is not None:
        http2.connection_keepalive.CopyFrom(keepalive)
    if max_concurrent_streams is not None:
        http2.max_concurrent_streams.value = max_concurrent_streams
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=http2
        )
    )
    return {HTTP_PROTOCOL_OPTIONS_KEY: pack(options)}
