"""Node identity and resource naming: the conventions every part of the mesh relies on.

Node ids (Envoy bootstrap ``node.id``; ``~`` never occurs in DNS names, so it splits safely):

- ``sidecar~<service>~<replica>``: the sidecar of one replica of MeshService ``<service>``,
  e.g. ``sidecar~orders~orders-v1-7d9f8-abcde`` (the pod name) or ``sidecar~orders~0`` locally.
- ``ingress~<name>`` or ``ingress~<name>~<replica>``: an ingress gateway, e.g.
  ``ingress~gateway``.
- ``proxyless~<service>~<replica>``: the xDS client inside one replica's app (gRPC's own, for
  a MeshService with ``spec.proxyless``): its channels take routes and endpoints from the
  control plane and skip the egress sidecar (``translate.proxyless``).

``node.cluster`` is the service name for sidecars and proxyless clients, ``ingress`` for
gateways.

Ports a node listens on come from its bootstrap's ``node.metadata["grpcmesh"]`` (see
``ProxyNode.from_node``), so the local launcher can allocate them while Kubernetes pods use the
defaults: ``inbound_port`` (15006), ``egress_port`` (15001), ``app_port`` (the service's
``spec.grpc.port``), ``ingress_port`` (8080), ``bind_address`` (0.0.0.0, for inbound and
ingress), ``ca_bundle`` (/etc/ssl/certs/ca-certificates.crt: the CA file in the proxy's image
that TLS to external backends is verified against), ``otlp_collector`` (host:port of an OTLP/gRPC
collector: when set, the node's HTTP connection managers trace with Envoy's OpenTelemetry
tracer; unset, nothing is traced), ``trace_sampling`` (the mesh's sampling ratio, 0 to 1,
default ``DEFAULT_TRACE_SAMPLING``), ``access_log`` (true: JSON access logs on stdout),
``local_address`` (127.0.0.1: the address the pod's containers share; see below).
The egress listener binds the local address: only the local app may use it.

The local address is 127.0.0.1 in every real pod (its containers share a network namespace).
Where pods share the host's network instead (the cluster tier's test node agent), the operator
can make it the pod IP (``OperatorSettings.pod_local_address``): the egress listener binds it
and the inbound cluster dials the app there, so two replicas on one host do not collide.

Resource names inside a node's snapshot:

==========================  ==================================================================
Listener ``inbound``        ``<bind>:<inbound_port>`` -> the app on ``<local>:<app_port>``;
                            its route configuration is inline (it changes only with the
                            listener).
Listener ``egress``         ``<local>:<egress_port>``; RDS ``egress``; the app dials it with
                            ``:authority`` = backend name.
Listener ``ingress``        ``<bind>:<ingress_port>``; RDS ``ingress``.
RouteConfiguration          ``egress`` (one virtual host per backend, domains ``name`` and
                            ``name:*``) and ``ingress`` (one virtual host ``*``, routes by gRPC
                            path prefix ``/<package.Service>/``, exposed services only).
Cluster ``<svc>|<version>`` EDS, one per version of a MeshService; its load assignment has the
                            same name. E.g. ``payments|v2``.
Cluster ``inbound|<port>``  STATIC, the local app (``<local>:<port>``).
Cluster ``external|<name>`` STRICT_DNS, an external backend.
==========================  ==================================================================

A proxyless node's snapshot holds, per backend ``<name>``, Listener ``<name>`` (an API
listener: what ``xds:///<name>`` resolves to) with RDS ``<name>``, the clusters ``<svc>|<version>``
and their load assignments, and for external backends the EDS cluster ``sidecar-egress`` (the
replica's own sidecar); see ``translate.proxyless``.

Route order within a service: exact method paths (``/<package.Service>/<Method>``) whose policy
differs from the service's, then the service prefix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from grpcmesh_control.mesh.errors import InvalidNodeId

__all__ = [
    "DEFAULT_EGRESS_PORT",
    "DEFAULT_INBOUND_PORT",
    "DEFAULT_INGRESS_PORT",
    "DEFAULT_TRACE_SAMPLING",
    "EGRESS",
    "INBOUND",
    "INGRESS",
    "METADATA_KEY",
    "OTLP_COLLECTOR_CLUSTER",
    "NodeId",
    "NodeKind",
    "ProxyNode",
    "external_cluster_name",
    "inbound_cluster_name",
    "node_group",
    "version_cluster_name",
]

INBOUND = "inbound"
EGRESS = "egress"
INGRESS = "ingress"
DEFAULT_TRACE_SAMPLING = 0.01
"""The mesh-wide share of new traces that are recorded: Envoy samples the requests that start
a trace at this ratio and the kit (``GRPCMESH_TRACE_SAMPLING_RATIO``) the calls that arrive
without one; every later hop follows the first one's decision, so a trace stays whole."""

OTLP_COLLECTOR_CLUSTER = "otlp_collector"
"""The cluster a tracing node sends spans to (``ProxyNode.otlp_collector``)."""

DEFAULT_INBOUND_PORT = 15006
DEFAULT_EGRESS_PORT = 15001
DEFAULT_INGRESS_PORT = 8080
DEFAULT_BIND_ADDRESS = "0.0.0.0"  # pods are reached on their IP; ports are explicit
DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian/Ubuntu, incl. Envoy's image
LOCALHOST = "127.0.0.1"

METADATA_KEY = "grpcmesh"
_SEP = "~"
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_REPLICA = re.compile(r"^[A-Za-z0-9]([-._A-Za-z0-9]*[A-Za-z0-9])?$")


class NodeKind(StrEnum):
    SIDECAR = "sidecar"
    INGRESS = "ingress"
    PROXYLESS = "proxyless"


@dataclass(frozen=True)
class NodeId:
    """A parsed node id. ``name`` is the service (sidecars) or the gateway name (ingress)."""

    kind: NodeKind
    name: str
    replica: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or len(self.name) > 63:
            raise InvalidNodeId(f"{self.name!r} is not a DNS-1035 label")
        if self.kind is not NodeKind.INGRESS and not self.replica:
            raise InvalidNodeId(f"{self.kind.value} node {self.name!r} needs a replica")
        if self.replica and not _REPLICA.match(self.replica):
            raise InvalidNodeId(
                f"replica {self.replica!r} has characters other than [-._A-Za-z0-9]"
            )

    @classmethod
    def parse(cls, text: str) -> NodeId:
        parts = text.split(_SEP)
        try:
            kind = NodeKind(parts[0])
        except ValueError:
            raise InvalidNodeId(
                f"node id {text!r}: expected sidecar~<service>~<replica>, ingress~<name> or "
                "proxyless~<service>~<replica>"
            ) from None
        if kind is not NodeKind.INGRESS and len(parts) != 3:
            raise InvalidNodeId(f"node id {text!r}: expected {kind.value}~<service>~<replica>")
        if kind is NodeKind.INGRESS and len(parts) not in (2, 3):
            raise InvalidNodeId(f"node id {text!r}: expected ingress~<name>[~<replica>]")
        return cls(kind, parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def sidecar(cls, service: str, replica: str) -> NodeId:
        return cls(NodeKind.SIDECAR, service, replica)

    @classmethod
    def ingress(cls, name: str = "gateway", replica: str = "") -> NodeId:
        return cls(NodeKind.INGRESS, name, replica)

    @classmethod
    def proxyless(cls, service: str, replica: str) -> NodeId:
        return cls(NodeKind.PROXYLESS, service, replica)

    @property
    def envoy_cluster(self) -> str:
        """The bootstrap's ``node.cluster``: the service for sidecars and proxyless clients,
        ``ingress`` for gateways."""
        return INGRESS if self.kind is NodeKind.INGRESS else self.name

    def __str__(self) -> str:
        parts = [self.kind.value, self.name] + ([self.replica] if self.replica else [])
        return _SEP.join(parts)


@dataclass(frozen=True)
class ProxyNode:
    """A connected Envoy: who it is and where it listens. ``app_port`` None = spec.grpc.port."""

    id: NodeId
    inbound_port: int = DEFAULT_INBOUND_PORT
    egress_port: int = DEFAULT_EGRESS_PORT
    ingress_port: int = DEFAULT_INGRESS_PORT
    app_port: int | None = None
    bind_address: str = DEFAULT_BIND_ADDRESS
    ca_bundle: str = DEFAULT_CA_BUNDLE
    otlp_collector: str | None = None
    trace_sampling: float = DEFAULT_TRACE_SAMPLING
    access_log: bool = False
    local_address: str = LOCALHOST

    @classmethod
    def from_node(cls, node_id: str, metadata: Mapping[str, Any] | None = None) -> ProxyNode:
        """From Envoy's ``node.id`` and ``node.metadata`` (as a dict, e.g. ``MessageToDict``)."""
        ours = (metadata or {}).get(METADATA_KEY) or {}
        if not isinstance(ours, Mapping):
            raise InvalidNodeId(f"node {node_id}: metadata.{METADATA_KEY} must be a mapping")
        defaults = cls(NodeId.parse(node_id))
        bind = _text(node_id, ours, "bind_address", defaults.bind_address)
        ca_bundle = _text(node_id, ours, "ca_bundle", defaults.ca_bundle)
        return cls(
            id=defaults.id,
            inbound_port=_port(node_id, ours, "inbound_port", defaults.inbound_port),
            egress_port=_port(node_id, ours, "egress_port", defaults.egress_port),
            ingress_port=_port(node_id, ours, "ingress_port", defaults.ingress_port),
            app_port=_optional_port(node_id, ours, "app_port"),
            bind_address=bind,
            ca_bundle=ca_bundle,
            otlp_collector=_collector(node_id, ours),
            trace_sampling=_ratio(node_id, ours, "trace_sampling", DEFAULT_TRACE_SAMPLING),
            access_log=_flag(node_id, ours, "access_log"),
            local_address=_text(node_id, ours, "local_address", defaults.local_address),
        )

    def metadata(self) -> dict[str, Any]:
        """The ``node.metadata`` that makes ``from_node`` return this node (for bootstraps)."""
        ours: dict[str, Any] = {
            "inbound_port": self.inbound_port,
            "egress_port": self.egress_port,
            "ingress_port": self.ingress_port,
            "bind_address": self.bind_address,
            "ca_bundle": self.ca_bundle,
        }
        if self.app_port is not None:
            ours["app_port"] = self.app_port
        if self.otlp_collector is not None:
            ours["otlp_collector"] = self.otlp_collector
        if self.trace_sampling != DEFAULT_TRACE_SAMPLING:
            ours["trace_sampling"] = self.trace_sampling
        if self.access_log:
            ours["access_log"] = True
        if self.local_address != LOCALHOST:
            ours["local_address"] = self.local_address
        return {METADATA_KEY: ours}


def _collector(node_id: str, metadata: Mapping[str, Any]) -> str | None:
    value = metadata.get("otlp_collector")
    if value is None:
        return None
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidNodeId(f"node {node_id}: metadata.{METADATA_KEY}.otlp_collector: {value!r}")
    return str(value)


def _ratio(node_id: str, metadata: Mapping[str, Any], key: str, default: float) -> float:
    value = metadata.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidNodeId(
            f"node {node_id}: metadata.{METADATA_KEY}.{key}: {value!r} (a ratio from 0 to 1)"
        )
    return float(value)


def _flag(node_id: str, metadata: Mapping[str, Any], key: str) -> bool:
    value = metadata.get(key, False)
    if not isinstance(value, bool):
        raise InvalidNodeId(f"node {node_id}: metadata.{METADATA_KEY}.{key}: {value!r}")
    return value


def _text(node_id: str, metadata: Mapping[str, Any], key: str, default: str) -> str:
    value = metadata.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidNodeId(f"node {node_id}: metadata.{METADATA_KEY}.{key}: {value!r}")
    return value


def _port(node_id: str, metadata: Mapping[str, Any], key: str, default: int) -> int:
    port = _optional_port(node_id, metadata, key)
    return default if port is None else port


def _optional_port(node_id: str, metadata: Mapping[str, Any], key: str) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    # protobuf Struct carries numbers as floats: 15006.0 is fine, 15006.5 is not.
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidNodeId(f"node {node_id}: metadata.{METADATA_KEY}.{key}: {value!r}")
    port = int(value)
    if not 1 <= port <= 65535:
        raise InvalidNodeId(f"node {node_id}: metadata.{METADATA_KEY}.{key}: {port} out of range")
    return port


def version_cluster_name(service: str, version: str) -> str:
    return f"{service}|{version}"


def inbound_cluster_name(app_port: int) -> str:
    return f"{INBOUND}|{app_port}"


def external_cluster_name(backend: str) -> str:
    return f"external|{backend}"


def node_group(node_id: str, metadata: Mapping[str, Any] | None = None) -> str:
    """The snapshot group of a node: nodes whose snapshots are equal by construction share one.

    Translation reads a node's kind, name and metadata (``ProxyNode``), never its replica, so
    the replicas of a service share one group, and one snapshot, while their metadata agrees
    (as it does for pods of one version); a pod-local address or other ports make another
    group. Named ``<kind>~<name>#<digest of the rest>``; ``#`` never occurs in a node id. A node
    whose id or metadata does not parse is a group of its own (it gets a problem, no snapshot).
    """
    try:
        node = ProxyNode.from_node(node_id, metadata)
    except InvalidNodeId:
        return node_id
    rest = tuple(getattr(node, f.name) for f in fields(node) if f.name != "id")
    digest = hashlib.sha256(repr(rest).encode()).hexdigest()[:12]
    return f"{node.id.kind.value}{_SEP}{node.id.name}#{digest}"
