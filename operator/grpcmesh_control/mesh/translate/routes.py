"""Route configurations: egress (one virtual host per backend, keyed by ``:authority``), ingress
(one virtual host, keyed by gRPC service path) and the inbound one (everything to the app)."""

from __future__ import annotations

from datetime import timedelta

from envoy.config.route.v3 import route_components_pb2 as route
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2

from grpcmesh_control.mesh.model.mesh import Backend, FaultInjection, MeshService, RetryOn
from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.bootstrap import XDS_CLUSTER
from grpcmesh_control.mesh.translate.naming import (
    EGRESS,
    INBOUND,
    INGRESS,
    external_cluster_name,
    inbound_cluster_name,
    version_cluster_name,
)
from grpcmesh_control.mesh.translate.policy import EffectiveRetry, RoutePolicy, route_policies
from grpcmesh_control.mesh.translate.registry import Registry

__all__ = [
    "ALWAYS_RETRIED",
    "FAULT_FILTER",
    "NOT_DELIVERED_HEADER",
    "NOT_DELIVERED_RETRIES",
    "REFLECTION_SERVICES",
    "RETRY_ON_TOKENS",
    "InboundDeadline",
    "egress_route_config",
    "fault_config",
    "honour_grpc_timeout",
    "inbound_deadlines",
    "inbound_route_config",
    "ingress_route_config",
    "retry_policy",
    "service_routes",
]

# Envoy's x-envoy-retry-grpc-on names.
RETRY_ON_TOKENS = {
    RetryOn.UNAVAILABLE: "unavailable",
    RetryOn.CANCELLED: "cancelled",
    RetryOn.DEADLINE_EXCEEDED: "deadline-exceeded",
    RetryOn.INTERNAL: "internal",
    RetryOn.RESOURCE_EXHAUSTED: "resource-exhausted",
}
# The request never reached an app in these cases, so every route retries them, whatever the
# method: the caller's sidecar could not connect or got REFUSED_STREAM, or the callee's sidecar
# answered that its own app was unreachable (``NOT_DELIVERED_HEADER``, see inbound_listener).
ALWAYS_RETRIED = ("connect-failure", "refused-stream", "retriable-headers")
NOT_DELIVERED_HEADER = "x-grpcmesh-not-delivered"
"""Set by a sidecar's inbound listener on its local replies that mean the request never reached
its app (no connection to it, or the inbound circuit breaker): callers may resend anything."""
NOT_DELIVERED_RETRIES = 2
"""Retries of an undelivered call on a route whose method is not retried otherwise."""
HOST_SELECTION_ATTEMPTS = 20
"""Host picks a retry may reject for having failed this call already (Envoy's
``host_selection_retry_max_attempts``). Many, because a dead endpoint attracts picks: its
sidecar answers at once, so it has the fewest active requests, and LEAST_REQUEST's two random
choices prefer it ~3 times in 4 beside one live peer. With 3 re-picks a retry went back to it
1 time in 3, and about 1 in 10 undelivered calls failed all its tries (the chaos e2e test);
with 20 that is 1 in 400 per retry. A re-pick is a few comparisons, only on retries."""
# Envoy ends a try that outlives per_try_timeout by resetting it, and retries a reset only
# under `reset` (or `5xx`/`gateway-error`), never under `deadline-exceeded`, which reads the
# grpc-status of an answer that never came. A reset also covers a connection lost mid-call.
PER_TRY_TIMEOUT_RETRIED = "reset"
NO_TIMEOUT = timedelta(0)
REFLECTION_SERVICES = (
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)
"""Routed from the ingress to the control plane (``host.reflection``), which answers for
exactly the exposed services. Both versions: grpcurl asks v1 first, older clients v1alpha."""
FAULT_FILTER = "envoy.filters.http.fault"
"""In the egress and ingress listeners' filter chains (``listeners``), inert there; a route
with faults configures it through ``typed_per_filter_config``."""


def honour_grpc_timeout(timeout: timedelta = NO_TIMEOUT) -> route.RouteAction.MaxStreamDuration:
    """A call's deadline as Envoy enforces it: ``timeout``, or the caller's ``grpc-timeout``
    header if that is shorter; ``timeout`` 0s bounds the call by the caller's deadline alone.

    Without the header limit Envoy ignores the caller's deadline: an upstream call outlives a
    client that has given up, and a stream with no route timeout (server-streaming) is bounded
    by nothing. The route's own bound must be ``max_stream_duration`` too, not only
    ``RouteAction.timeout``: once a route sets ``max_stream_duration`` Envoy ignores its
    ``timeout`` (the "new timeouts" path), and an expired ``timeout`` is answered with HTTP 504,
    which gRPC clients read as UNAVAILABLE (retryable, "never ran") rather than
    DEADLINE_EXCEEDED. An expired stream duration is answered with DEADLINE_EXCEEDED.
    Both measured with Envoy 1.40 (tests/e2e: the per-method timeout test).
    """
    limits = route.RouteAction.MaxStreamDuration(grpc_timeout_header_max=e.duration(timeout))
    if timeout > NO_TIMEOUT:
        limits.max_stream_duration.CopyFrom(e.duration(timeout))
    return limits


def retry_policy(retry: EffectiveRetry | None) -> route.RetryPolicy:
    """The route's retries: ``retry`` (a method safe to repeat) plus, always, the failures that
    never reached an app (``ALWAYS_RETRIED``); ``None`` retries only those.

    DEADLINE_EXCEEDED means both an answer with that status and a try cut by the per-try
    timeout (measured: tests/integration/test_retries_envoy). Every retry goes to another
    endpoint than the ones that failed this call and, where the cluster fails over
    (``clusters.version_assignment``), to another priority than the ones tried: a call the
    canary could not take is retried on the other versions."""
    if retry is None:
        tokens, attempts = list(ALWAYS_RETRIED), NOT_DELIVERED_RETRIES
    else:
        tokens = [RETRY_ON_TOKENS[code] for code in retry.retry_on] + list(ALWAYS_RETRIED)
        if retry.per_try_timeout is not None and RetryOn.DEADLINE_EXCEEDED in retry.retry_on:
            tokens.append(PER_TRY_TIMEOUT_RETRIED)
        attempts = retry.attempts
    policy = route.RetryPolicy(
        retry_on=",".join(tokens),
        num_retries=e.u32(attempts),
        retriable_headers=[route.HeaderMatcher(name=NOT_DELIVERED_HEADER, present_match=True)],
        # Retry on another endpoint than the ones that already failed this call.
        retry_host_predicate=[
            route.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=e.pack(e.previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=HOST_SELECTION_ATTEMPTS,
        # ...and in another priority than the ones tried (when one has healthy hosts).
        retry_priority=route.RetryPolicy.RetryPriority(
            name="envoy.retry_priorities.previous_priorities",
            typed_config=e.pack(
                e.previous_priorities_pb2.PreviousPrioritiesConfig(update_frequency=1)
            ),
        ),
    )
    if retry is not None and retry.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(e.duration(retry.per_try_timeout))
    return policy


def service_routes(
    svc: MeshService, registry: Registry, *, ingress: bool = False
) -> list[route.Route]:
    """Routes for ``svc``: method overrides first, then one prefix per gRPC service.

    ``ingress`` keeps only the gRPC services ``svc`` owns in the registry, since the ingress
    cannot tell two services with the same gRPC service apart (sidecars can, by authority).
    """
    return [
        _route(svc, policy)
        for policy in route_policies(svc, registry.catalog)
        if not ingress or registry.grpc_owners.get(policy.grpc_service) == svc.name
    ]


def _route(svc: MeshService, policy: RoutePolicy) -> route.Route:
    match = (
        route.RouteMatch(path=policy.path) if policy.exact else route.RouteMatch(prefix=policy.path)
    )
    action = _target(svc)
    # Envoy enforces the deadline through max_stream_duration (see honour_grpc_timeout) and
    # ignores `timeout` on such a route; it is kept so the route reads the same as its policy.
    action.timeout.CopyFrom(e.duration(policy.timeout))
    action.max_stream_duration.CopyFrom(honour_grpc_timeout(policy.timeout))
    action.retry_policy.CopyFrom(retry_policy(policy.retry))
    built = route.Route(name=f"{svc.name}{policy.path}", match=match, route=action)
    if policy.fault is not None:
        built.typed_per_filter_config[FAULT_FILTER].CopyFrom(e.pack(fault_config(policy.fault)))
    return built


def _fraction(percentage: float) -> e.percent_pb2.FractionalPercent:
    # Per million, so the CRD's 0.0001 % steps are exact.
    return e.percent_pb2.FractionalPercent(
        numerator=round(percentage * 10_000),
        denominator=e.percent_pb2.FractionalPercent.DenominatorType.MILLION,
    )


def fault_config(fault: FaultInjection) -> fault_pb2.HTTPFault:
    """Envoy's fault filter config for one route. Faults apply before the router, so an
    aborted call is never retried and a delay counts against the caller's deadline."""
    config = fault_pb2.HTTPFault()
    if fault.delay is not None:
        config.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=e.duration(fault.delay.fixed_delay),
                percentage=_fraction(fault.delay.percentage),
            )
        )
    if fault.abort is not None:
        config.abort.CopyFrom(
            fault_pb2.FaultAbort(
                grpc_status=fault.abort.grpc_status.number,
                percentage=_fraction(fault.abort.percentage),
            )
        )
    return config


def _target(svc: MeshService) -> route.RouteAction:
    """One cluster, or weighted clusters when traffic is split across versions."""
    live = [v for v in svc.versions if v.weight > 0]
    if len(live) == 1:
        return route.RouteAction(cluster=version_cluster_name(svc.name, live[0].name))
    return route.RouteAction(
        weighted_clusters=route.WeightedCluster(
            clusters=[
                route.WeightedCluster.ClusterWeight(
                    name=version_cluster_name(svc.name, v.name), weight=e.u32(v.weight)
                )
                for v in live
            ]
        )
    )


def _virtual_host(name: str, routes: list[route.Route]) -> route.VirtualHost:
    # The kit's channel factory sends :authority = the backend name; grpc clients may add a port.
    # x-envoy-attempt-count on every response tells the calling app whether this sidecar
    # retried: a local reply ("no healthy upstream") after a retry may follow an attempt that
    # landed, so only an unretried one means "never sent" (docs/reliability.md).
    return route.VirtualHost(
        name=name,
        domains=[name, f"{name}:*"],
        routes=routes,
        include_attempt_count_in_response=True,
    )


def _external_virtual_host(backend: Backend) -> route.VirtualHost:
    # No policy is declared for an external host: no retries, and the caller's own gRPC
    # deadline (not a route timeout) bounds each call, streaming or not.
    action = route.RouteAction(
        cluster=external_cluster_name(backend.name),
        timeout=e.duration(NO_TIMEOUT),
        max_stream_duration=honour_grpc_timeout(),
    )
    if backend.external is not None:
        action.host_rewrite_literal = backend.external.host
    catch_all = route.Route(
        name=f"{backend.name}/", match=route.RouteMatch(prefix="/"), route=action
    )
    return _virtual_host(backend.name, [catch_all])


def egress_route_config(svc: MeshService, registry: Registry) -> e.route_pb2.RouteConfiguration:
    """What ``svc``'s app may call: one virtual host per resolvable backend, by name."""
    hosts = []
    for backend in sorted(registry.resolved_backends(svc), key=lambda b: b.name):
        if backend.external is not None:
            hosts.append(_external_virtual_host(backend))
            continue
        target = registry.service(backend.name)
        if target is not None:  # always, for a resolved backend; narrows the type
            hosts.append(_virtual_host(target.name, service_routes(target, registry)))
    return e.route_pb2.RouteConfiguration(name=EGRESS, virtual_hosts=hosts)


def ingress_route_config(registry: Registry) -> e.route_pb2.RouteConfiguration:
    """Every exposed MeshService (``spec.expose``), routed by the gRPC service in the path,
    then server reflection, answered by the control plane over the node's xDS cluster (an
    exposed service that declares a reflection service itself keeps its own)."""
    routes = [
        r
        for svc in registry.exposed_services()
        for r in service_routes(svc, registry, ingress=True)
    ]
    routes += [_reflection_route(name) for name in REFLECTION_SERVICES]
    routes.append(_not_exposed_route())
    return e.route_pb2.RouteConfiguration(
        name=INGRESS,
        virtual_hosts=[route.VirtualHost(name=INGRESS, domains=["*"], routes=routes)],
    )


def _reflection_route(grpc_service: str) -> route.Route:
    # A reflection stream lasts as long as the client keeps it: no route deadline, the
    # caller's own bounds it.
    action = route.RouteAction(
        cluster=XDS_CLUSTER,
        timeout=e.duration(NO_TIMEOUT),
        max_stream_duration=honour_grpc_timeout(),
    )
    return route.Route(
        name=f"reflection/{grpc_service}",
        match=route.RouteMatch(prefix=f"/{grpc_service}/"),
        route=action,
    )


NOT_EXPOSED = (
    "no service exposed at this ingress has this method "
    "(a MeshService is exposed with spec.expose: true)"
)


def _not_exposed_route() -> route.Route:
    """Last: a call to anything else gets UNIMPLEMENTED with a reason (Envoy turns a direct
    404 into a gRPC status, the body into its message), not a bare one."""
    return route.Route(
        name="not-exposed",
        match=route.RouteMatch(prefix="/"),
        direct_response=route.DirectResponseAction(
            status=404, body=e.base_pb2.DataSource(inline_string=NOT_EXPOSED)
        ),
    )


InboundDeadline = tuple[str, bool, timedelta]
"""A route of a service's own inbound listener: (gRPC path, exact match, deadline)."""


def inbound_deadlines(svc: MeshService, registry: Registry) -> tuple[InboundDeadline, ...]:
    """The deadline of each of ``svc``'s routes (``policy.route_policies``), for its own
    inbound listener: the same bounds its callers' sidecars enforce."""
    return tuple(
        (policy.path, policy.exact, policy.timeout)
        for policy in route_policies(svc, registry.catalog)
    )


def inbound_route_config(
    app_port: int, deadlines: tuple[InboundDeadline, ...] = ()
) -> e.route_pb2.RouteConfiguration:
    """Everything to the local app, each of the service's routes bounded by its deadline (or
    the caller's ``grpc-timeout``, if shorter), and anything else (health, reflection) by the
    caller's alone.

    A caller's sidecar enforces the same deadlines first, so for it this bound never fires;
    it is what bounds a call from a proxyless client (``translate.proxyless``), whose own
    route timeout grpcio does not keep (a service-config timeout fires up to 2 s early in
    Python, grpc/grpc#34547), and which therefore sends none. It bounds each attempt: a
    proxyless client's retries are bounded as a whole by the caller's deadline."""
    routes = [
        route.Route(
            name=f"app{path}",
            match=route.RouteMatch(path=path) if exact else route.RouteMatch(prefix=path),
            route=_to_app(app_port, timeout),
        )
        for path, exact, timeout in deadlines
    ]
    routes.append(
        route.Route(name="app", match=route.RouteMatch(prefix="/"), route=_to_app(app_port))
    )
    return e.route_pb2.RouteConfiguration(
        name=INBOUND,
        virtual_hosts=[route.VirtualHost(name=INBOUND, domains=["*"], routes=routes)],
    )


def _to_app(app_port: int, deadline: timedelta = NO_TIMEOUT) -> route.RouteAction:
    # `timeout` only reads the same as the bound; Envoy keeps max_stream_duration (see
    # honour_grpc_timeout).
    return route.RouteAction(
        cluster=inbound_cluster_name(app_port),
        timeout=e.duration(deadline),
        max_stream_duration=honour_grpc_timeout(deadline),
    )
