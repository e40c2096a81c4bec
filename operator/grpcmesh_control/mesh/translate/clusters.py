"""Clusters and load assignments: one EDS cluster per MeshService version, the local app, and
external hosts. Every cluster speaks HTTP/2 upstream, because gRPC needs it.

Failover across versions: a version's load assignment holds its own endpoints at priority 0
and, at priority 1, the endpoints of every other version that takes traffic, one locality per
version weighted by its route weight. Envoy sends a priority the share its health covers
(healthy fraction x the overprovisioning factor, capped at 100 %) and spills the rest to
priority 1, where locality-weighted balancing splits it by version weight. The factor is
``FAILOVER_OVERPROVISIONING`` rather than Envoy's 1.4, so a version keeps all of its share while
any of its endpoints is healthy (its other replicas take the load of the failed ones, as without
failover; a small canary is not flooded because a stable replica failed), and only a version
with no ready or healthy endpoint (not ready in EDS, or ejected by outlier detection) fails
over: its share goes to the other versions in proportion to their weights, and comes back when
one of its endpoints does. Weighted clusters alone never fail over: the route picks the cluster
before any host health is known.

A version without weight fails over too. Its weight only keeps new calls from being routed to
it: calls routed before (in flight, waiting to be retried, or routed by a route Envoy has not
replaced yet, since EDS lands before RDS) still pick hosts in its cluster. Local mode sets the
weight of a version with no ready endpoint to 0 (``local.rollout``); when its failover went with
the weight, a canary's death made the next EDS push leave its cluster with no healthy host at
all, and each call that used it meanwhile failed with "no healthy upstream".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta

from grpcmesh_control.mesh.model.identity import workload_identity
from grpcmesh_control.mesh.model.mesh import (
    Backend,
    CircuitBreaker,
    Endpoint,
    LoadBalancer,
    MeshService,
    OutlierDetection,
    RetryBudget,
    VersionTarget,
)
from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.naming import (
    LOCALHOST,
    OTLP_COLLECTOR_CLUSTER,
    external_cluster_name,
    inbound_cluster_name,
    version_cluster_name,
)
from grpcmesh_control.mesh.translate.tls import MeshTls, upstream_transport_socket

__all__ = [
    "FAILOVER_OVERPROVISIONING",
    "FAILOVER_PRIORITY",
    "WORKER_STREAMS_PER_CONNECTION",
    "collector_cluster",
    "external_cluster",
    "inbound_cluster",
    "load_assignment",
    "service_clusters",
    "version_assignment",
    "version_cluster",
]

Cluster = e.cluster_pb2.Cluster
LOCAL_CONNECT_TIMEOUT = timedelta(seconds=1)
ENFORCE_ALWAYS = 100  # percent; Envoy's enforcing_* fields
NEVER = 0
FAILOVER_PRIORITY = 1
"""The priority of the other versions' endpoints in a version's load assignment."""
FAILOVER_OVERPROVISIONING = 100_000
"""Envoy's ``overprovisioning_factor`` in percent (1000x): one healthy endpoint in a thousand
keeps the version's whole share. Small enough that factor x endpoints fits Envoy's 32 bits."""

_LB_POLICIES = {
    LoadBalancer.LEAST_REQUEST: Cluster.LbPolicy.LEAST_REQUEST,
    LoadBalancer.ROUND_ROBIN: Cluster.LbPolicy.ROUND_ROBIN,
    LoadBalancer.RANDOM: Cluster.LbPolicy.RANDOM,
}


def version_cluster(
    svc: MeshService, version: VersionTarget, tls: MeshTls | None = None
) -> e.cluster_pb2.Cluster:
    """EDS cluster ``<service>|<version>``, configured by the *target's* traffic policy. With
    ``tls``: mTLS to the target, which must present ``svc``'s identity."""
    policy = svc.traffic_policy
    name = version_cluster_name(svc.name, version.name)
    cluster = Cluster(
        name=name,
        type=Cluster.DiscoveryType.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(eds_config=e.ads_source(), service_name=name),
        connect_timeout=e.duration(policy.connect_timeout),
        lb_policy=_LB_POLICIES[policy.load_balancer],
        typed_extension_protocol_options=e.http2_upstream_options(),
        # Not-ready endpoints are sent as UNHEALTHY; with Envoy's default 50% panic threshold
        # they would get traffic as soon as half a version is not ready. 0 disables panic mode.
        # Locality weights split a failed-over share across the other versions by weight.
        common_lb_config=Cluster.CommonLbConfig(
            healthy_panic_threshold=e.percent_pb2.Percent(value=0.0),
            locality_weighted_lb_config=Cluster.CommonLbConfig.LocalityWeightedLbConfig(),
        ),
        circuit_breakers=_circuit_breakers(policy.circuit_breaker, policy.retries.budget),
    )
    if policy.outlier_detection is not None:
        cluster.outlier_detection.CopyFrom(_outlier_detection(policy.outlier_detection))
    if tls is not None:
        server = workload_identity(svc.name, svc.namespace, tls.trust_domain)
        cluster.transport_socket.CopyFrom(upstream_transport_socket(server))
    return cluster


def service_clusters(svc: MeshService, tls: MeshTls | None = None) -> list[e.cluster_pb2.Cluster]:
    """A cluster per declared version, weight 0 included, so shifting weight needs no new CDS."""
    return [version_cluster(svc, v, tls) for v in svc.versions]


def _circuit_breakers(
    limits: CircuitBreaker, budget: RetryBudget
) -> e.circuit_breaker_pb2.CircuitBreakers:
    thresholds = e.circuit_breaker_pb2.CircuitBreakers.Thresholds(
        priority=e.base_pb2.RoutingPriority.DEFAULT,
        # Always set: it bounds retries by load instead of by a fixed count (and, per Envoy,
        # takes precedence over max_retries).
        retry_budget=e.circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
            budget_percent=e.percent_pb2.Percent(value=budget.percent),
            min_retry_concurrency=e.u32(budget.min_concurrency),
        ),
    )
    for field, value in (
        ("max_connections", limits.max_connections),
        ("max_pending_requests", limits.max_pending_requests),
        ("max_requests", limits.max_requests),
        ("max_retries", limits.max_retries),
    ):
        if value is not None:
            getattr(thresholds, field).value = value
    return e.circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])


def _outlier_detection(spec: OutlierDetection) -> e.outlier_detection_pb2.OutlierDetection:
    out = e.outlier_detection_pb2.OutlierDetection(
        interval=e.duration(spec.interval),
        base_ejection_time=e.duration(spec.base_ejection_time),
        max_ejection_percent=e.u32(spec.max_ejection_percent),
        # Envoy enforces consecutive 5xx and success rate by default and gateway failures not
        # at all; enforce exactly the detectors the resource sets.
        enforcing_consecutive_5xx=e.u32(ENFORCE_ALWAYS if spec.consecutive_5xx else NEVER),
        enforcing_consecutive_gateway_failure=e.u32(
            ENFORCE_ALWAYS if spec.consecutive_gateway_failure else NEVER
        ),
        enforcing_success_rate=e.u32(NEVER),
    )
    if spec.consecutive_5xx is not None:
        out.consecutive_5xx.value = spec.consecutive_5xx
    if spec.consecutive_gateway_failure is not None:
        out.consecutive_gateway_failure.value = spec.consecutive_gateway_failure
    return out


def _lb_endpoints(endpoints: Iterable[Endpoint]) -> list[e.endpoint_components_pb2.LbEndpoint]:
    health = e.health_check_pb2.HealthStatus
    return [
        e.endpoint_components_pb2.LbEndpoint(
            endpoint=e.endpoint_components_pb2.Endpoint(
                address=e.socket_address(ep.address, ep.port)
            ),
            health_status=health.HEALTHY if ep.ready else health.UNHEALTHY,
        )
        for ep in endpoints
    ]


def load_assignment(
    cluster_name: str, endpoints: Iterable[Endpoint]
) -> e.endpoint_pb2.ClusterLoadAssignment:
    """Always a load assignment, even empty: an EDS cluster without one never finishes warming."""
    lb_endpoints = _lb_endpoints(endpoints)
    assignment = e.endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    if lb_endpoints:
        assignment.endpoints.add().lb_endpoints.extend(lb_endpoints)
    return assignment


def version_assignment(
    svc: MeshService, version: VersionTarget, endpoints: Mapping[str, Sequence[Endpoint]]
) -> e.endpoint_pb2.ClusterLoadAssignment:
    """The load assignment of ``<svc>|<version>``: the version's endpoints at priority 0, and
    every other version that takes traffic at priority 1 (one locality each, weighted by the
    version's weight). ``endpoints`` maps a version name to its endpoints.

    A version that takes no traffic keeps its failover: calls routed to it before its weight
    went to 0 still use its cluster (see the module's docstring).

    Each locality is named by its version (``sub_zone``), and locality-weighted balancing
    (``version_cluster``) needs every locality weighted; priority 0 holds one, weight 1.
    """
    assignment = e.endpoint_pb2.ClusterLoadAssignment(
        cluster_name=version_cluster_name(svc.name, version.name),
        policy=e.endpoint_pb2.ClusterLoadAssignment.Policy(
            overprovisioning_factor=e.u32(FAILOVER_OVERPROVISIONING)
        ),
    )
    own = _lb_endpoints(endpoints.get(version.name, ()))
    failover = []
    for other in svc.versions:
        theirs = _lb_endpoints(endpoints.get(other.name, ()))
        if other.name != version.name and other.weight > 0 and theirs:
            failover.append(_locality(other.name, other.weight, FAILOVER_PRIORITY, theirs))
    if own or failover:
        # Priorities may not skip a level: priority 0 is there even when the version has no
        # endpoint (scaled to zero), and then all of its share fails over.
        assignment.endpoints.append(_locality(version.name, 1, 0, own))
    assignment.endpoints.extend(failover)
    return assignment


def _locality(
    version: str,
    weight: int,
    priority: int,
    lb_endpoints: list[e.endpoint_components_pb2.LbEndpoint],
) -> e.endpoint_components_pb2.LocalityLbEndpoints:
    return e.endpoint_components_pb2.LocalityLbEndpoints(
        locality=e.base_pb2.Locality(sub_zone=version),
        lb_endpoints=lb_endpoints,
        load_balancing_weight=e.u32(weight),
        priority=priority,
    )


WORKER_STREAMS_PER_CONNECTION = 4
"""Calls in flight per connection from a sidecar to an app with several workers
(``spec.workload.workers``): each connection is one worker's (the kernel hands it to one), so
past this Envoy opens another, and a few dozen calls in flight already spread over them."""


def inbound_cluster(
    app_port: int, address: str = LOCALHOST, *, workers: int = 1
) -> e.cluster_pb2.Cluster:
    """STATIC cluster ``inbound|<port>``: the app on the pod's local address (127.0.0.1).
    With several ``workers`` on the port, calls are spread over several connections."""
    name = inbound_cluster_name(app_port)
    streams = WORKER_STREAMS_PER_CONNECTION if workers > 1 else None
    return Cluster(
        name=name,
        type=Cluster.DiscoveryType.STATIC,
        connect_timeout=e.duration(LOCAL_CONNECT_TIMEOUT),
        load_assignment=load_assignment(name, [Endpoint(address, app_port, "")]),
        typed_extension_protocol_options=e.http2_upstream_options(max_concurrent_streams=streams),
    )


def collector_cluster(address: str) -> e.cluster_pb2.Cluster:
    """``otlp_collector``: the OTLP/gRPC collector at ``address`` (host:port) that a tracing
    node's Envoy sends spans to; STRICT_DNS, so a collector Service name works in a cluster."""
    host, _, port = address.rpartition(":")
    return Cluster(
        name=OTLP_COLLECTOR_CLUSTER,
        type=Cluster.DiscoveryType.STRICT_DNS,
        dns_lookup_family=Cluster.DnsLookupFamily.V4_PREFERRED,
        connect_timeout=e.duration(LOCAL_CONNECT_TIMEOUT),
        load_assignment=load_assignment(OTLP_COLLECTOR_CLUSTER, [Endpoint(host, int(port), "")]),
        typed_extension_protocol_options=e.http2_upstream_options(),
    )


def external_cluster(backend: Backend, ca_bundle: str) -> e.cluster_pb2.Cluster:
    """STRICT_DNS cluster ``external|<name>``. With TLS the server certificate must chain to
    ``ca_bundle`` (a file in the proxy's image) and name the host."""
    if backend.external is None:
        raise ValueError(f"backend {backend.name} is not external")
    host = backend.external
    name = external_cluster_name(backend.name)
    cluster = Cluster(
        name=name,
        type=Cluster.DiscoveryType.STRICT_DNS,
        dns_lookup_family=Cluster.DnsLookupFamily.V4_PREFERRED,
        connect_timeout=e.duration(LOCAL_CONNECT_TIMEOUT),
        load_assignment=load_assignment(name, [Endpoint(host.host, host.port, "")]),
        typed_extension_protocol_options=e.http2_upstream_options(),
    )
    if host.tls:
        validation = e.tls_common_pb2.CertificateValidationContext(
            match_typed_subject_alt_names=[
                e.tls_common_pb2.SubjectAltNameMatcher(
                    san_type=e.tls_common_pb2.SubjectAltNameMatcher.SanType.DNS,
                    matcher=e.string_matcher_pb2.StringMatcher(exact=host.host),
                )
            ]
        )
        # A file, not system_root_certs: Envoy does not implement that field (gRPC-only).
        validation.trusted_ca.filename = ca_bundle
        tls = e.tls_pb2.UpstreamTlsContext(
            sni=host.host,
            common_tls_context=e.tls_pb2.CommonTlsContext(
                alpn_protocols=["h2"], validation_context=validation
            ),
        )
        cluster.transport_socket.CopyFrom(
            e.base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=e.pack(tls))
        )
    return cluster
