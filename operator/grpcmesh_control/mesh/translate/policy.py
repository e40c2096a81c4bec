"""Effective per-route policy of a MeshService: which methods get their own route, with which
deadline and retries. Pure data, no Envoy types, so the rules are testable on their own.

The rules:

- A method is retried only if it is safe to repeat: ``spec.methods[].idempotent`` when set,
  otherwise the proto's ``idempotency_level`` (IDEMPOTENT or NO_SIDE_EFFECTS). Methods the
  catalog does not know are never retried. Client-streaming methods are never retried (Envoy
  would have to buffer the whole request stream). (Every route still resends a call that
  certainly never reached an app, ``routes.ALWAYS_RETRIED``; that is transport, not policy,
  and Envoy abandons it for a request stream longer than its buffer.)
- Unary methods get ``trafficPolicy.timeout``; streaming methods get no deadline (0s) unless
  their spec.methods entry sets one, since a route timeout would cut a long-lived stream.
  The inherited per-try timeout is dropped for streaming methods for the same reason.
- Per-method retry fields override the service's field by field; ``attempts: 0`` disables.
- Faults (``trafficPolicy.fault``) apply to every method; a method's own ``fault`` replaces
  the service's for it (an empty one turns injection off there).
- A method gets its own exact-path route only when its policy differs from the service's
  prefix route (no retries, the service timeout and fault), which keeps route tables short.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from grpcmesh_control.mesh.model.catalog import MethodCatalog, MethodInfo
from grpcmesh_control.mesh.model.mesh import FaultInjection, MeshService, MethodPolicy, RetryOn

__all__ = ["EffectiveRetry", "RoutePolicy", "route_policies"]

NO_TIMEOUT = timedelta(0)


@dataclass(frozen=True)
class EffectiveRetry:
    attempts: int
    retry_on: tuple[RetryOn, ...]
    per_try_timeout: timedelta | None = None


@dataclass(frozen=True)
class RoutePolicy:
    """One route: ``path`` is ``/pkg.Service/Method`` (exact) or ``/pkg.Service/`` (prefix)."""

    grpc_service: str
    path: str
    exact: bool
    timeout: timedelta
    retry: EffectiveRetry | None = None
    fault: FaultInjection | None = None
    """Only an active one (something is injected); ``None`` otherwise."""


def route_policies(svc: MeshService, catalog: MethodCatalog) -> tuple[RoutePolicy, ...]:
    """Routes of every gRPC service of ``svc``: method routes first, then the service prefix."""
    routes: list[RoutePolicy] = []
    for grpc_service in svc.grpc.services:
        prefix = RoutePolicy(
            grpc_service,
            f"/{grpc_service}/",
            False,
            svc.traffic_policy.timeout,
            fault=_active(svc.traffic_policy.fault),
        )
        names = {m.name for m in catalog.methods(grpc_service)} | {
            m.method for m in svc.methods if m.service == grpc_service
        }
        for name in sorted(names):
            route = _method_route(svc, grpc_service, name, catalog.lookup(grpc_service, name))
            if (route.timeout, route.retry, route.fault) != (
                prefix.timeout,
                prefix.retry,
                prefix.fault,
            ):
                routes.append(route)
        routes.append(prefix)
    return tuple(routes)


def _method_route(
    svc: MeshService, grpc_service: str, name: str, info: MethodInfo | None
) -> RoutePolicy:
    override = svc.method(f"{grpc_service}/{name}") or MethodPolicy(f"{grpc_service}/{name}")
    streaming = info is not None and info.streaming
    if override.timeout is not None:
        timeout = override.timeout
    else:
        timeout = NO_TIMEOUT if streaming else svc.traffic_policy.timeout
    return RoutePolicy(
        grpc_service=grpc_service,
        path=f"/{grpc_service}/{name}",
        exact=True,
        timeout=timeout,
        retry=_retry(svc, override, info),
        fault=_active(override.fault if override.fault is not None else svc.traffic_policy.fault),
    )


def _active(fault: FaultInjection | None) -> FaultInjection | None:
    return fault if fault is not None and fault.active else None


def _retry(
    svc: MeshService, override: MethodPolicy, info: MethodInfo | None
) -> EffectiveRetry | None:
    if override.idempotent is not None:
        safe = override.idempotent
    else:
        safe = info is not None and info.idempotency.safe_to_retry
    if not safe or (info is not None and info.client_streaming):
        return None
    base = svc.traffic_policy.retries
    own = override.retries
    attempts = base.attempts if own is None or own.attempts is None else own.attempts
    if attempts == 0:
        return None
    retry_on = base.retry_on if own is None or own.retry_on is None else own.retry_on
    if own is not None and own.per_try_timeout is not None:
        per_try: timedelta | None = own.per_try_timeout
    elif info is not None and info.streaming:
        per_try = None
    else:
        per_try = base.per_try_timeout
    return EffectiveRetry(attempts=attempts, retry_on=retry_on, per_try_timeout=per_try)
