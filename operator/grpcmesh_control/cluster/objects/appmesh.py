"""Provider ``appmesh``: a MeshService as ``appmesh.k8s.aws/v1beta2`` resources.

==========================  ======================================================================
Mesh ``<mesh_name>``        One for the whole mesh (cluster-scoped, so no owner: the operator must
                            never prune it with a MeshService). Namespaces join it by label.
VirtualNode ``<svc>-<ver>`` One per version: pods by ``grpcmesh.io/service``+``version`` labels,
                            DNS discovery through the per-version headless Service (so each node
                            resolves only its version's pods), gRPC listener with outlier
                            detection and a request cap from the traffic policy, the service's
                            backends.
VirtualRouter ``<svc>``     gRPC routes in the native provider's order (``route_policies``):
                            method routes first, then one per gRPC service; timeouts, retries
                            (only where the native provider retries: idempotent methods) and
                            weighted targets per version.
VirtualService ``<svc>``    ``<svc>.<ns>.svc.<cluster domain>``, provided by the router.
==========================  ======================================================================

``meshRef`` is left out: the App Mesh controller's webhook fills it from the namespace's mesh
(its uid is not known to a pure function). External backends have no App Mesh equivalent here
(their VirtualService name would have to be unique per mesh, not per caller): they need an
``ALLOW_ALL`` egress filter, and ``render_problems`` says so otherwise.

What App Mesh cannot express, documented rather than refused (refusing would leave App Mesh
with no canaries at all): failover across versions (the native provider's priority-1
endpoints of the other versions, ``translate.clusters.version_assignment``; here a version
with no healthy pod keeps its weighted target's share, and those calls fail), and the retry of
undelivered calls on routes of unsafe methods (App Mesh's ``tcpRetryEvents`` belong to a
route's retry policy, which only idempotent methods have).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from grpcmesh_control.cluster.objects import kinds
from grpcmesh_control.cluster.objects.meta import OwnerRef, object_metadata
from grpcmesh_control.cluster.objects.names import (
    MANAGED_BY,
    PART_OF,
    service_labels,
    version_labels,
    version_selector,
    version_service_name,
)
from grpcmesh_control.cluster.objects.settings import EgressFilter, OperatorSettings
from grpcmesh_control.mesh.errors import FieldError
from grpcmesh_control.mesh.model.catalog import MethodCatalog
from grpcmesh_control.mesh.model.identity import SpiffeId, workload_identity
from grpcmesh_control.mesh.model.mesh import MeshService, RetryOn, VersionTarget
from grpcmesh_control.mesh.translate.policy import RoutePolicy, route_policies

__all__ = [
    "GRPC_RETRY_EVENTS",
    "MESH_NAMESPACE_LABEL",
    "appmesh_objects",
    "appmesh_problems",
    "trust_bundle_secret",
    "virtual_node_name",
]

MESH_NAMESPACE_LABEL = "mesh"
GRPC_RETRY_EVENTS = {code: code.value.lower().replace("_", "-") for code in RetryOn}
"""App Mesh's grpcRetryEvents spell the status codes as Envoy's retry-grpc-on tokens."""
_METHOD_NAME_MAX = 50  # the CRD's maxLength for grpcRoute.match.methodName
_PRIORITY_MAX = 1000  # the CRD's maximum route priority
# Connect failures never reached the server: the native provider always retries them too.
_TCP_RETRY_EVENTS = ["connection-error"]
_STREAM_IDLE = timedelta(hours=1)  # as the native provider's listeners
_NO_TIMEOUT = timedelta(0)


def virtual_node_name(service: str, version: str) -> str:
    return version_service_name(service, version)


def trust_bundle_secret(trust_domain: str) -> str:
    """The SDS name under which SPIRE's agent serves a trust domain's bundle to App Mesh."""
    return f"spiffe://{trust_domain}"


def _sds(name: str) -> dict[str, Any]:
    return {"sds": {"secretName": name}}


def _listener_tls(svc: MeshService, identity: SpiffeId) -> dict[str, Any]:
    return {
        "certificate": _sds(identity.uri),
        "mode": svc.mtls.value,
        "validation": {"trust": _sds(trust_bundle_secret(identity.trust_domain))},
    }


def _client_tls(identity: SpiffeId, backend: SpiffeId) -> dict[str, Any]:
    return {
        "certificate": _sds(identity.uri),
        "enforce": True,
        "validation": {
            "subjectAlternativeNames": {"match": {"exact": [backend.uri]}},
            "trust": _sds(trust_bundle_secret(identity.trust_domain)),
        },
    }


def appmesh_problems(
    svc: MeshService, settings: OperatorSettings, catalog: MethodCatalog | None = None
) -> Iterator[FieldError]:
    """What App Mesh cannot express for ``svc``."""
    if settings.appmesh.egress_filter is EgressFilter.DROP_ALL:
        for i, backend in enumerate(svc.backends):
            if backend.external is not None:
                yield FieldError(
                    f"spec.backends[{i}].external",
                    "the appmesh provider reaches external hosts only with the mesh's egress "
                    "filter set to ALLOW_ALL",
                )
    # App Mesh routes have no fault injection (its Envoy config is AWS's, not ours).
    if svc.traffic_policy.fault is not None and svc.traffic_policy.fault.active:
        yield FieldError(
            "spec.trafficPolicy.fault",
            "the appmesh provider cannot inject faults (App Mesh routes have no fault "
            "injection); use the envoy provider",
        )
    for i, override in enumerate(svc.methods):
        if override.fault is not None and override.fault.active:
            yield FieldError(
                f"spec.methods[{i}].fault",
                "the appmesh provider cannot inject faults (App Mesh routes have no fault "
                "injection); use the envoy provider",
            )
    # App Mesh's only caller control is a VirtualNode's backends (who the caller may reach);
    # a VirtualNode cannot say who may call it, let alone which methods.
    if svc.authorization is not None:
        yield FieldError(
            "spec.authorization",
            "the appmesh provider cannot enforce authorization (an App Mesh VirtualNode does "
            "not choose its callers or their methods); use the envoy provider",
        )
    routes = route_policies(svc, catalog or MethodCatalog())
    if len(routes) > _PRIORITY_MAX + 1:
        yield FieldError(
            "spec.methods", f"{len(routes)} routes; an App Mesh router orders at most 1001"
        )
    for policy in routes:
        method = policy.path.rsplit("/", 1)[1]
        if policy.exact and len(method) > _METHOD_NAME_MAX:
            yield FieldError(
                "spec.methods",
                f"{policy.path}: App Mesh matches method names of at most "
                f"{_METHOD_NAME_MAX} characters",
            )


def appmesh_objects(
    svc: MeshService,
    *,
    namespace: str,
    owner: OwnerRef,
    settings: OperatorSettings,
    catalog: MethodCatalog | None = None,
) -> list[dict[str, Any]]:
    """The Mesh, one VirtualNode per version, the VirtualRouter and the VirtualService.

    ``catalog`` tells which methods are idempotent (and so retried); without it only methods
    spec.methods marks idempotent are.
    """
    routes = route_policies(svc, catalog or MethodCatalog())
    return [
        _mesh(settings),
        *(_virtual_node(svc, v, namespace, owner, settings) for v in svc.versions),
        _virtual_router(svc, routes, namespace, owner),
        _virtual_service(svc, namespace, owner, settings),
    ]


def _duration(value: timedelta) -> dict[str, Any]:
    micros = value // timedelta(microseconds=1)
    if micros % 1_000_000 == 0:
        return {"unit": "s", "value": micros // 1_000_000}
    # Round sub-millisecond parts up: a deadline must never become shorter (or zero: none).
    return {"unit": "ms", "value": -(-micros // 1_000)}


def _mesh(settings: OperatorSettings) -> dict[str, Any]:
    name = settings.appmesh.mesh_name
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": PART_OF}
    obj = object_metadata(kinds.MESH, name, "", labels, None)
    return obj | {
        "spec": {
            "egressFilter": {"type": settings.appmesh.egress_filter.value},
            "namespaceSelector": {"matchLabels": {MESH_NAMESPACE_LABEL: name}},
        }
    }


def _listener(svc: MeshService, identity: SpiffeId) -> dict[str, Any]:
    policy = svc.traffic_policy
    listener: dict[str, Any] = {
        "healthCheck": {
            "healthyThreshold": 2,
            "intervalMillis": 5000,
            "port": svc.grpc.port,
            "protocol": "grpc",
            "timeoutMillis": 2000,
            "unhealthyThreshold": 2,
        },
        "portMapping": {"port": svc.grpc.port, "protocol": "grpc"},
        "tls": _listener_tls(svc, identity),
        # Server side: no deadline of its own (callers' routes carry it), as the native
        # provider's inbound listener; idle streams are cut after an hour.
        "timeout": {
            "grpc": {"idle": _duration(_STREAM_IDLE), "perRequest": _duration(_NO_TIMEOUT)}
        },
    }
    if policy.circuit_breaker.max_requests is not None:
        listener["connectionPool"] = {"grpc": {"maxRequests": policy.circuit_breaker.max_requests}}
    outlier = policy.outlier_detection
    if outlier is not None:
        # App Mesh counts one kind of failure (5xx, which includes the gateway errors).
        errors = outlier.consecutive_5xx or outlier.consecutive_gateway_failure
        if errors is not None:
            listener["outlierDetection"] = {
                "baseEjectionDuration": _duration(outlier.base_ejection_time),
                "interval": _duration(outlier.interval),
                "maxEjectionPercent": outlier.max_ejection_percent,
                "maxServerErrors": errors,
            }
    return dict(sorted(listener.items()))


def _virtual_node(
    svc: MeshService,
    version: VersionTarget,
    namespace: str,
    owner: OwnerRef,
    settings: OperatorSettings,
) -> dict[str, Any]:
    name = virtual_node_name(svc.name, version.name)
    labels = version_labels(svc.name, version.name)
    obj = object_metadata(kinds.VIRTUAL_NODE, name, namespace, labels, owner)
    hostname = (
        f"{version_service_name(svc.name, version.name)}.{namespace}.svc.{settings.cluster_domain}"
    )
    trust_domain = settings.identity.trust_domain
    identity = workload_identity(svc.name, namespace, trust_domain)
    spec: dict[str, Any] = {}
    backends = [
        {
            "virtualService": {
                "clientPolicy": {
                    "tls": _client_tls(identity, workload_identity(b.name, namespace, trust_domain))
                },
                "virtualServiceRef": {"name": b.name},
            }
        }
        for b in sorted(svc.backends, key=lambda b: b.name)
        if b.external is None
    ]
    if backends:
        spec["backends"] = backends
    spec |= {
        "listeners": [_listener(svc, identity)],
        "podSelector": {"matchLabels": version_selector(svc.name, version.name)},
        "serviceDiscovery": {"dns": {"hostname": hostname, "responseType": "ENDPOINTS"}},
    }
    return obj | {"spec": spec}


def _route(svc: MeshService, policy: RoutePolicy, priority: int) -> dict[str, Any]:
    grpc_service, _, method = policy.path.strip("/").partition("/")
    match: dict[str, Any] = {"serviceName": grpc_service}
    if policy.exact:
        match["methodName"] = method
    targets = [
        {
            "port": svc.grpc.port,
            "virtualNodeRef": {"name": virtual_node_name(svc.name, v.name)},
            "weight": v.weight,
        }
        for v in svc.versions
        if v.weight > 0
    ]
    route: dict[str, Any] = {
        "action": {"weightedTargets": targets},
        "match": match,
        "timeout": {"perRequest": _duration(policy.timeout)},
    }
    if policy.retry is not None:
        # App Mesh requires a per-retry timeout; the call's own deadline bounds it otherwise.
        per_try = policy.retry.per_try_timeout
        route["retryPolicy"] = {
            "grpcRetryEvents": [GRPC_RETRY_EVENTS[code] for code in policy.retry.retry_on],
            "maxRetries": policy.retry.attempts,
            "perRetryTimeout": _duration(policy.timeout if per_try is None else per_try),
            "tcpRetryEvents": list(_TCP_RETRY_EVENTS),
        }
    name = f"{grpc_service}-{method}" if policy.exact else grpc_service
    return {"grpcRoute": dict(sorted(route.items())), "name": name, "priority": priority}


def _virtual_router(
    svc: MeshService, routes: tuple[RoutePolicy, ...], namespace: str, owner: OwnerRef
) -> dict[str, Any]:
    obj = object_metadata(
        kinds.VIRTUAL_ROUTER, svc.name, namespace, service_labels(svc.name), owner
    )
    return obj | {
        "spec": {
            "listeners": [{"portMapping": {"port": svc.grpc.port, "protocol": "grpc"}}],
            # Priority keeps the native order: exact method routes before their service prefix.
            "routes": [_route(svc, policy, i) for i, policy in enumerate(routes)],
        }
    }


def _virtual_service(
    svc: MeshService, namespace: str, owner: OwnerRef, settings: OperatorSettings
) -> dict[str, Any]:
    obj = object_metadata(
        kinds.VIRTUAL_SERVICE, svc.name, namespace, service_labels(svc.name), owner
    )
    return obj | {
        "spec": {
            "awsName": f"{svc.name}.{namespace}.svc.{settings.cluster_domain}",
            "provider": {"virtualRouter": {"virtualRouterRef": {"name": svc.name}}},
        }
    }
