"""The pod template of one version of a MeshService: the app container and, with the native
provider, the Envoy native sidecar in front of it.

Probes (native provider). The app binds 127.0.0.1 (the kit's default, kept on purpose: the
sidecar is then the only way in, as with Istio's handling of localhost-bound apps), so the
kubelet, which probes the pod IP, cannot reach it directly. Its gRPC probes therefore target
the sidecar's inbound port, which forwards everything to the app: readiness then checks the
path callers actually take (Envoy has its inbound listener from xDS, and the app's health
service says SERVING). The cost is that liveness depends on Envoy too; the liveness budget
(a minute) outlasts a sidecar restart, and the sidecar has its own probes. With App Mesh the
injected proxy intercepts the app port, so probes go to the app port.
"""

from __future__ import annotations

from typing import Any

from grpcmesh_control.cluster.objects.names import (
    ANNOTATION_BOOTSTRAP_HASH,
    ANNOTATION_DEFAULT_CONTAINER,
    APP_CONTAINER,
    CONFIG_VOLUME,
    DATA_VOLUME,
    TMP_VOLUME,
    config_map_name,
    version_labels,
)
from grpcmesh_control.cluster.objects.proxy import (
    local_address,
    pod_local_env,
    pod_name_env,
    proxy_container,
    proxy_volumes,
    proxyless_app_env,
    proxyless_bootstrap,
    proxyless_xds_mount,
    proxyless_xds_volumes,
)
from grpcmesh_control.cluster.objects.resources import render_resources
from grpcmesh_control.cluster.objects.security import (
    pod_security_context,
    restricted_security_context,
)
from grpcmesh_control.cluster.objects.settings import OperatorSettings, PodLocalAddress, Provider
from grpcmesh_control.mesh import appenv
from grpcmesh_control.mesh.model.identity import service_account_name
from grpcmesh_control.mesh.model.mesh import EnvVar, MeshService, VersionTarget, Workload

__all__ = [
    "METRICS_PORT_NAME",
    "app_container",
    "app_probe_port",
    "data_dir",
    "env_var",
    "pod_template",
]

METRICS_PORT_NAME = "metrics"
_ANY_ADDRESS = "0.0.0.0"  # metrics only: Prometheus scrapes the pod IP


def data_dir(service: str, settings: OperatorSettings) -> str:
    return f"{settings.app.data_root}/{service}"


def app_probe_port(svc: MeshService, settings: OperatorSettings) -> int:
    """Where the kubelet's gRPC probes go (see the module docstring)."""
    if settings.provider is Provider.NATIVE:
        return settings.proxy.inbound_port
    return svc.grpc.port


def env_var(env: EnvVar) -> dict[str, Any]:
    if env.secret_key_ref is not None:
        ref = env.secret_key_ref
        return {"name": env.name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    if env.config_map_key_ref is not None:
        ref = env.config_map_key_ref
        return {
            "name": env.name,
            "valueFrom": {"configMapKeyRef": {"name": ref.name, "key": ref.key}},
        }
    return {"name": env.name, "value": env.value or ""}


def _app_env(
    svc: MeshService, version: VersionTarget, workload: Workload, settings: OperatorSettings
) -> list[Any]:
    """The workload's own variables, then the kit's contract (``mesh.appenv``), which wins."""
    local = local_address(settings)
    proxy = settings.proxy
    proxyless = _is_proxyless(svc, settings)
    sidecar = settings.provider is Provider.NATIVE
    gate = proxyless_app_env(settings) if proxyless else []
    mine = appenv.RESERVED | {g["name"] for g in gate}
    own = [env_var(e) for e in workload.env if e.name not in mine]
    # The root filesystem is read-only: point the services' sqlite file (db_path) at the data
    # emptyDir unless spec.config or the workload's env already chose a path (an env variable
    # would override spec.config, which is reloaded live and so should win).
    chosen_db = "db_path" in svc.config_map or any(e.name == appenv.DB_PATH for e in workload.env)
    contract = appenv.AppEnv(
        service=svc.name,
        version=version.name,
        host=local,
        port=svc.grpc.port,
        # Metrics on every address, unless pods share the host's network: then on the pod IP
        # (two replicas on 0.0.0.0 would collide).
        metrics_host=(
            _ANY_ADDRESS if settings.pod_local_address is PodLocalAddress.LOOPBACK else local
        ),
        metrics_port=settings.app.metrics_port,
        config_file=_config_path(settings),
        sidecar_egress=f"{local}:{proxy.egress_port}" if sidecar else None,
        sidecar_admin=f"{local}:{proxy.admin_port}" if sidecar else None,
        db_path=None if chosen_db else f"{data_dir(svc.name, settings)}/{svc.name}.db",
        xds_bootstrap=proxyless_bootstrap(svc.name, settings) if proxyless else None,
        workers=workload.workers,
        otlp_endpoint=settings.tracing.otlp_endpoint,
        trace_sampling_ratio=settings.tracing.sampling,
    )
    mesh = [{"name": name, "value": value} for name, value in contract.variables().items()]
    return pod_local_env(settings) + (pod_name_env() if proxyless else []) + own + mesh + gate


def _is_proxyless(svc: MeshService, settings: OperatorSettings) -> bool:
    """render_problems refuses spec.proxyless with a provider other than the native one."""
    return settings.provider is Provider.NATIVE and svc.proxyless


def _config_path(settings: OperatorSettings) -> str:
    return f"{settings.app.config_dir}/{settings.app.config_file}"


def app_container(
    svc: MeshService, version: VersionTarget, workload: Workload, settings: OperatorSettings
) -> dict[str, Any]:
    probe_port = app_probe_port(svc, settings)

    def grpc() -> dict[str, Any]:  # a fresh dict per probe: callers may edit the result
        return {"grpc": {"port": probe_port}}

    ports = [
        {"name": METRICS_PORT_NAME, "containerPort": settings.app.metrics_port, "protocol": "TCP"}
    ]
    if settings.provider is not Provider.NATIVE:
        # Only declared where the app port is what the pod IP serves.
        ports.insert(0, {"name": "grpc", "containerPort": svc.grpc.port, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": APP_CONTAINER,
        "image": workload.image,
        "imagePullPolicy": "IfNotPresent",
    }
    if workload.command:
        container["command"] = list(workload.command)
    if workload.args:
        container["args"] = list(workload.args)
    container |= {
        "env": _app_env(svc, version, workload, settings),
        "ports": ports,
        # Startup: migrations and waiting for the sidecar's first config (2 min). Readiness
        # drops quickly once the kit drains (NOT_SERVING). Liveness is patient (see docstring).
        "startupProbe": {**grpc(), "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {**grpc(), "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {
            **grpc(),
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 6,
        },
        "resources": render_resources(workload.resources, settings.app.resources),
        "securityContext": restricted_security_context(settings.app.uid),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": settings.app.config_dir, "readOnly": True},
            {"name": DATA_VOLUME, "mountPath": data_dir(svc.name, settings)},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }
    if _is_proxyless(svc, settings) and settings.xds_credential is not None:
        container["volumeMounts"].append(proxyless_xds_mount())
    return container


def pod_template(
    svc: MeshService,
    version: VersionTarget,
    workload: Workload,
    settings: OperatorSettings,
    *,
    bootstrap_hash: str | None,
) -> dict[str, Any]:
    """The Deployment's ``spec.template`` of ``version``, running ``workload`` (the version's
    own: ``svc.workload_of(version)``). ``bootstrap_hash`` (native provider) goes into an
    annotation so a bootstrap change rolls the pods; the app config is deliberately not
    hashed, since the kit reloads it live from the directory mount."""
    annotations = {ANNOTATION_DEFAULT_CONTAINER: APP_CONTAINER}
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(svc.name)}},
        {"name": DATA_VOLUME, "emptyDir": {}},
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    spec: dict[str, Any] = {
        # The app does not talk to the Kubernetes API; a mounted token would only be a risk.
        "automountServiceAccountToken": False,
        # Service links flood the env with *_PORT variables; the mesh routes by name instead.
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        # Its own ServiceAccount (rendered beside the Deployment): the workload's identity.
        "serviceAccountName": service_account_name(svc.name),
    }
    if settings.provider is Provider.NATIVE:
        if bootstrap_hash is not None:
            annotations[ANNOTATION_BOOTSTRAP_HASH] = bootstrap_hash
        spec["initContainers"] = [proxy_container(svc.name, settings)]
        volumes += proxy_volumes(svc.name, settings)
        if svc.proxyless:
            volumes += proxyless_xds_volumes(svc.name, settings)
    spec["containers"] = [app_container(svc, version, workload, settings)]
    spec["volumes"] = sorted(volumes, key=lambda v: str(v["name"]))
    return {
        "metadata": {
            "labels": version_labels(svc.name, version.name),
            "annotations": dict(sorted(annotations.items())),
        },
        "spec": spec,
    }
