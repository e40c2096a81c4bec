"""MeshService -> the Kubernetes objects that should exist for it (pure; no API calls).

The operator server-side-applies each object and prunes the ones it owns that are no longer
listed (a removed version's Deployment and Service, the ServiceMonitor when the CRD goes).
Names and labels: ``k8s.names``; the pod: ``k8s.pod``; App Mesh: ``k8s.appmesh``.

Output is deterministic (fixed list order, sorted labels, env and volumes, canonical bootstrap
JSON), so applying twice is a no-op and golden tests are stable.
"""

from __future__ import annotations

from typing import Any

import yaml

from grpcmesh_control.cluster.objects import kinds
from grpcmesh_control.cluster.objects.appmesh import appmesh_objects, appmesh_problems
from grpcmesh_control.cluster.objects.meta import OwnerRef, object_metadata
from grpcmesh_control.cluster.objects.names import (
    LABEL_SERVICE,
    LABEL_VERSION,
    bootstrap_config_map_name,
    config_map_name,
    deployment_name,
    service_labels,
    version_labels,
    version_selector,
    version_service_name,
)
from grpcmesh_control.cluster.objects.pod import METRICS_PORT_NAME, pod_template
from grpcmesh_control.cluster.objects.proxy import HEALTH_PORT_NAME, bootstrap_data, bootstrap_hash
from grpcmesh_control.cluster.objects.settings import OperatorSettings, Provider
from grpcmesh_control.mesh.errors import FieldError, InvalidResource
from grpcmesh_control.mesh.model.catalog import MethodCatalog
from grpcmesh_control.mesh.model.identity import service_account_name
from grpcmesh_control.mesh.model.mesh import MeshService, VersionTarget, Workload
from grpcmesh_control.mesh.model.schema import KIND
from grpcmesh_control.observability.scrape import (
    METRICS_PATHS,
    Job,
    PodConventions,
    job_relabelings,
)

__all__ = [
    "GRPC_PORT_NAME",
    "config_data",
    "desired_objects",
    "render_problems",
    "reserved_ports",
]

GRPC_PORT_NAME = "grpc"
ENVOY_STATS_PATH = "/stats/prometheus"


def reserved_ports(settings: OperatorSettings) -> dict[int, str]:
    """Ports the pod already uses besides the app's gRPC port, and what for."""
    proxy = settings.proxy
    return {
        proxy.admin_port: "the sidecar's admin interface",
        proxy.egress_port: "the sidecar's egress listener",
        proxy.inbound_port: "the sidecar's inbound listener",
        proxy.health_port: "the sidecar's health listener",
        settings.app.metrics_port: "the app's metrics endpoint",
    }


def render_problems(
    svc: MeshService, settings: OperatorSettings, catalog: MethodCatalog | None = None
) -> tuple[FieldError, ...]:
    """What makes a parsed MeshService impossible to deploy with these settings (the
    validating webhook reports these too, so they surface at ``kubectl apply``)."""
    problems: list[FieldError] = []
    used_by = reserved_ports(settings).get(svc.grpc.port)
    if used_by is not None:
        problems.append(FieldError("spec.grpc.port", f"{svc.grpc.port} is reserved for {used_by}"))
    if settings.provider is Provider.APPMESH:
        problems += appmesh_problems(svc, settings, catalog)
        if svc.proxyless:
            problems.append(
                FieldError(
                    "spec.proxyless",
                    "needs the native provider: proxyless clients take their routes from "
                    "this control plane over xDS, which App Mesh's proxies do not use",
                )
            )
    return tuple(problems)


def desired_objects(
    svc: MeshService,
    *,
    namespace: str,
    owner: OwnerRef,
    settings: OperatorSettings,
    catalog: MethodCatalog | None = None,
) -> list[dict[str, Any]]:
    """Every object ``svc`` needs, in apply order (ConfigMaps before the pods that mount them).

    ``catalog`` (the protos' idempotency) only matters to the appmesh provider's retries.
    Raises ``InvalidResource`` for a MeshService that cannot be deployed (``render_problems``).
    """
    problems = render_problems(svc, settings, catalog)
    if problems:
        raise InvalidResource(f"{KIND} {namespace}/{svc.name}", problems)
    native = settings.provider is Provider.NATIVE
    objects = [_config_map(svc, namespace, owner)]
    bootstrap = bootstrap_data(svc.name, svc.grpc.port, settings) if native else None
    if bootstrap is not None:
        objects.append(_bootstrap_config_map(svc, namespace, owner, bootstrap))
    objects.append(_service(svc, namespace, owner, settings))
    objects += [_version_service(svc, v, namespace, owner, settings) for v in svc.versions]
    if svc.workload is not None:
        objects.append(_service_account(svc, namespace, owner))
        digest = None if bootstrap is None else bootstrap_hash(bootstrap)
        objects += [
            _deployment(svc, v, workload, namespace, owner, settings, digest)
            for v in svc.versions
            if (workload := svc.workload_of(v)) is not None
        ]
    if settings.service_monitor_crd:
        objects.append(_service_monitor(svc, namespace, owner, settings))
    if settings.provider is Provider.APPMESH:
        objects += appmesh_objects(
            svc, namespace=namespace, owner=owner, settings=settings, catalog=catalog
        )
    return objects


def config_data(svc: MeshService) -> dict[str, str]:
    """The app ConfigMap's ``data``; an empty mapping still yields a file the kit can read."""
    return {"config.yaml": yaml.safe_dump(dict(svc.config_map), sort_keys=True)}


def _config_map(svc: MeshService, namespace: str, owner: OwnerRef) -> dict[str, Any]:
    name = config_map_name(svc.name)
    obj = object_metadata(kinds.CONFIG_MAP, name, namespace, service_labels(svc.name), owner)
    return obj | {"data": config_data(svc)}


def _service_account(svc: MeshService, namespace: str, owner: OwnerRef) -> dict[str, Any]:
    """The workload's own ServiceAccount: its identity (``spiffe://<td>/ns/<namespace>/sa/
    <name>``), so no two MeshServices share one and authorization can tell them apart. It
    holds no API permissions, and its token is not mounted by default: nothing in the pod
    calls the Kubernetes API (the sidecar's xDS credential will be a projected, audience-bound
    token, which needs no automount)."""
    name = service_account_name(svc.name)
    obj = object_metadata(kinds.SERVICE_ACCOUNT, name, namespace, service_labels(svc.name), owner)
    return obj | {"automountServiceAccountToken": False}


def _bootstrap_config_map(
    svc: MeshService, namespace: str, owner: OwnerRef, data: dict[str, str]
) -> dict[str, Any]:
    name = bootstrap_config_map_name(svc.name)
    obj = object_metadata(kinds.CONFIG_MAP, name, namespace, service_labels(svc.name), owner)
    return obj | {"data": data}


def _grpc_port(svc: MeshService, settings: OperatorSettings) -> dict[str, Any]:
    # Numeric targetPort: named ports are resolved against regular containers only by older
    # endpoint controllers, and the inbound port lives on the (init) sidecar container.
    target = settings.proxy.inbound_port if settings.provider is Provider.NATIVE else svc.grpc.port
    return {
        "appProtocol": "grpc",
        "name": GRPC_PORT_NAME,
        "port": svc.grpc.port,
        "protocol": "TCP",
        "targetPort": target,
    }


def _service(
    svc: MeshService, namespace: str, owner: OwnerRef, settings: OperatorSettings
) -> dict[str, Any]:
    metrics = settings.app.metrics_port
    ports = [
        _grpc_port(svc, settings),
        {
            "appProtocol": "http",
            "name": METRICS_PORT_NAME,
            "port": metrics,
            "protocol": "TCP",
            "targetPort": metrics,
        },
    ]
    if settings.provider is Provider.NATIVE:
        health = settings.proxy.health_port
        ports.append(
            {
                "appProtocol": "http",
                "name": HEALTH_PORT_NAME,
                "port": health,
                "protocol": "TCP",
                "targetPort": health,
            }
        )
    obj = object_metadata(kinds.SERVICE, svc.name, namespace, service_labels(svc.name), owner)
    return obj | {
        "spec": {"ports": ports, "selector": {LABEL_SERVICE: svc.name}, "type": "ClusterIP"}
    }


def _version_service(
    svc: MeshService,
    version: VersionTarget,
    namespace: str,
    owner: OwnerRef,
    settings: OperatorSettings,
) -> dict[str, Any]:
    name = version_service_name(svc.name, version.name)
    labels = version_labels(svc.name, version.name)
    obj = object_metadata(kinds.SERVICE, name, namespace, labels, owner)
    return obj | {
        "spec": {
            # Headless: only its EndpointSlices (and per-version DNS) are wanted, no VIP.
            "clusterIP": "None",
            "ports": [_grpc_port(svc, settings)],
            "selector": version_selector(svc.name, version.name),
        }
    }


def _deployment(
    svc: MeshService,
    version: VersionTarget,
    workload: Workload,
    namespace: str,
    owner: OwnerRef,
    settings: OperatorSettings,
    digest: str | None,
) -> dict[str, Any]:
    name = deployment_name(svc.name, version.name)
    labels = version_labels(svc.name, version.name)
    obj = object_metadata(kinds.DEPLOYMENT, name, namespace, labels, owner)
    replicas = svc.replicas if version.replicas is None else version.replicas
    return obj | {
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": version_selector(svc.name, version.name)},
            "template": pod_template(svc, version, workload, settings, bootstrap_hash=digest),
        }
    }


SCRAPE_CONVENTIONS = PodConventions(
    app_metrics_port=METRICS_PORT_NAME, envoy_stats_port=HEALTH_PORT_NAME
)
"""The labels and port names ``pod_template`` gives mesh pods, in the scrape model's terms."""


def _service_monitor(
    svc: MeshService, namespace: str, owner: OwnerRef, settings: OperatorSettings
) -> dict[str, Any]:
    # The scrape model's labels (job, service, version, replica, proxy), as the chart's
    # PodMonitors set them: the dashboards and alerts work with either.
    endpoints = [
        {
            "path": METRICS_PATHS[Job.APP],
            "port": METRICS_PORT_NAME,
            "relabelings": job_relabelings(Job.APP, SCRAPE_CONVENTIONS),
        }
    ]
    if settings.provider is Provider.NATIVE:
        endpoints.append(
            {
                "path": ENVOY_STATS_PATH,
                "port": HEALTH_PORT_NAME,
                "relabelings": job_relabelings(Job.ENVOY, SCRAPE_CONVENTIONS),
            }
        )
    obj = object_metadata(
        kinds.SERVICE_MONITOR, svc.name, namespace, service_labels(svc.name), owner
    )
    return obj | {
        "spec": {
            "endpoints": endpoints,
            "namespaceSelector": {"matchNames": [namespace]},
            # Per-version metrics for canary dashboards, from the pods' version label.
            "podTargetLabels": [LABEL_VERSION],
            # The main Service only: the per-version ones select the same pods again.
            "selector": {
                "matchExpressions": [{"key": LABEL_VERSION, "operator": "DoesNotExist"}],
                "matchLabels": {LABEL_SERVICE: svc.name},
            },
        }
    }
