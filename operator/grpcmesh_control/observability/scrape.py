"""The scrape model: which jobs Prometheus scrapes and which labels every target carries.

One model for local mode and the cluster, so the dashboards and rules work unchanged on both:

- job ``grpcmesh-app``, path ``/metrics``: each replica's service kit (go-grpc-prometheus
  metrics); labels ``service``, ``version``, ``replica``.
- job ``grpcmesh-envoy``, path ``/stats/prometheus``: each sidecar and ingress Envoy; labels
  ``service``, ``version`` (sidecars only), ``replica``, ``proxy``.
- job ``grpcmesh-control-plane``, path ``/metrics``: the xDS control plane (``grpcmesh_*``);
  label ``replica``.

``service`` is the MeshService name (``payments``) — for an ingress Envoy, the gateway's name;
``version`` the MeshService version (``v2``; absent on ingress); ``replica`` the replica id
(``v1-0`` locally, the pod name in a cluster); ``proxy`` is ``sidecar`` or ``ingress``.
``instance`` stays Prometheus' default (the scraped host:port).

Local mode: ``prometheus_config(ScrapeTargets.from_replicas(...))`` renders a prometheus.yml with
static targets. Cluster: ``pod_monitors()`` renders prometheus-operator PodMonitors whose
relabelings produce the same jobs and labels from pod labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "METRICS_PATHS",
    "AppTarget",
    "ControlPlaneTarget",
    "Job",
    "Label",
    "PodConventions",
    "ProxyKind",
    "ProxyTarget",
    "ReplicaAddresses",
    "ScrapeModelError",
    "ScrapeTargets",
    "job_relabelings",
    "pod_monitors",
    "prometheus_config",
]


class ScrapeModelError(ValueError):
    """A target or setting Prometheus would reject; the message names it."""


class Job(StrEnum):
    """The ``job`` label: one per kind of target, the same locally and in a cluster."""

    APP = "grpcmesh-app"
    ENVOY = "grpcmesh-envoy"
    CONTROL_PLANE = "grpcmesh-control-plane"


class Label(StrEnum):
    """Target labels the model adds (besides ``job`` and ``instance``)."""

    SERVICE = "service"
    VERSION = "version"
    REPLICA = "replica"
    PROXY = "proxy"


class ProxyKind(StrEnum):
    """The ``proxy`` label of ``grpcmesh-envoy`` targets (the values of ``NodeKind`` that run
    an Envoy: not a proxyless client)."""

    SIDECAR = "sidecar"
    INGRESS = "ingress"


METRICS_PATHS: Mapping[Job, str] = {
    Job.APP: "/metrics",
    Job.ENVOY: "/stats/prometheus",
    Job.CONTROL_PLANE: "/metrics",
}

# host:port, where host is a name, an IPv4 address or a bracketed IPv6 address.
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
# Prometheus' duration syntax (model.ParseDuration), e.g. 1s, 500ms, 1m30s.
_DURATION = re.compile(
    r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"
)


def _check_address(address: str) -> None:
    if not _ADDRESS.match(address):
        raise ScrapeModelError(f"scrape target {address!r}: expected host:port")


def _check_duration(name: str, value: str) -> None:
    if not value or value == "0" or not _DURATION.match(value):
        raise ScrapeModelError(f"{name} {value!r}: expected a Prometheus duration such as 1s")


@dataclass(frozen=True)
class AppTarget:
    """One replica's service-kit ``/metrics`` endpoint."""

    address: str
    service: str
    version: str
    replica: str

    def __post_init__(self) -> None:
        _check_address(self.address)

    def labels(self) -> dict[str, str]:
        return {
            Label.SERVICE.value: self.service,
            Label.VERSION.value: self.version,
            Label.REPLICA.value: self.replica,
        }


@dataclass(frozen=True)
class ProxyTarget:
    """One Envoy's admin address (``/stats/prometheus``): a replica's sidecar or an ingress.

    ``service`` is the owning MeshService (sidecar) or the gateway name (ingress); ``version`` is
    empty for an ingress, and then no ``version`` label is set."""

    address: str
    service: str
    replica: str
    kind: ProxyKind = ProxyKind.SIDECAR
    version: str = ""

    def __post_init__(self) -> None:
        _check_address(self.address)

    def labels(self) -> dict[str, str]:
        labels = {Label.SERVICE.value: self.service, Label.REPLICA.value: self.replica}
        if self.version:
            labels[Label.VERSION.value] = self.version
        labels[Label.PROXY.value] = self.kind.value
        return labels


@dataclass(frozen=True)
class ControlPlaneTarget:
    """The control plane's admin address (``/metrics``)."""

    address: str
    replica: str = "0"

    def __post_init__(self) -> None:
        _check_address(self.address)

    def labels(self) -> dict[str, str]:
        return {Label.REPLICA.value: self.replica}


class ReplicaAddresses(Protocol):
    """What ``ScrapeTargets.from_replicas`` reads from each replica; the local launcher's
    ``ReplicaState`` has these fields (``metrics``, ``sidecar_admin``: host:port)."""

    @property
    def service(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def replica(self) -> str: ...
    @property
    def metrics(self) -> str: ...
    @property
    def sidecar_admin(self) -> str: ...


@dataclass(frozen=True)
class ScrapeTargets:
    """Everything local mode's Prometheus scrapes. Order is kept (it is the file's order)."""

    apps: tuple[AppTarget, ...] = ()
    proxies: tuple[ProxyTarget, ...] = ()
    control_planes: tuple[ControlPlaneTarget, ...] = ()

    @classmethod
    def from_replicas(
        cls,
        replicas: Iterable[ReplicaAddresses],
        *,
        control_plane: str | None = None,
        ingresses: Mapping[str, str] | None = None,
    ) -> ScrapeTargets:
        """Targets for a local mesh: per replica its app and its sidecar; the control plane's
        admin address; ``ingresses`` maps a gateway name to its Envoy's admin address.

        E.g. from ``state.json``: ``ScrapeTargets.from_replicas(state.replicas,
        control_plane=state.control_plane_admin, ingresses={"gateway": state.ingress_admin})``.
        """
        replicas = tuple(replicas)
        return cls(
            apps=tuple(AppTarget(r.metrics, r.service, r.version, r.replica) for r in replicas),
            proxies=(
                *(
                    ProxyTarget(r.sidecar_admin, r.service, r.replica, version=r.version)
                    for r in replicas
                ),
                *(
                    ProxyTarget(address, name, "0", kind=ProxyKind.INGRESS)
                    for name, address in (ingresses or {}).items()
                ),
            ),
            control_planes=(ControlPlaneTarget(control_plane),) if control_plane else (),
        )

    def by_job(self) -> dict[Job, Sequence[AppTarget | ProxyTarget | ControlPlaneTarget]]:
        return {Job.APP: self.apps, Job.ENVOY: self.proxies, Job.CONTROL_PLANE: self.control_planes}


def prometheus_config(
    targets: ScrapeTargets,
    scrape_interval: str = "1s",
    *,
    rule_files: Sequence[str] = (),
    evaluation_interval: str | None = None,
) -> dict[str, Any]:
    """A prometheus.yml (as a dict; dump it with ``yaml.safe_dump``) scraping ``targets`` with
    static configs, one job per ``Job`` (present even when empty, so the file's shape is fixed).

    The 1 s default suits local mode, where a demo lasts seconds; rules are evaluated as often
    as targets are scraped unless ``evaluation_interval`` says otherwise. ``rule_files`` are
    paths as Prometheus should see them (e.g. the file ``alerts.write_rules`` wrote).
    """
    _check_duration("scrape_interval", scrape_interval)
    evaluation_interval = evaluation_interval or scrape_interval
    _check_duration("evaluation_interval", evaluation_interval)
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    config["scrape_configs"] = [
        {
            "job_name": job.value,
            "metrics_path": METRICS_PATHS[job],
            # One static config per target: each carries its own labels.
            "static_configs": [{"targets": [t.address], "labels": t.labels()} for t in job_targets],
        }
        for job, job_targets in targets.by_job().items()
    ]
    return config


# --- cluster ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodConventions:
    """Pod labels and port names the cluster's PodMonitors rely on.

    Defaults are a proposal for the operator and chart (which set them on pods): the workload's
    ``app.kubernetes.io/*`` recommended labels, and named container ports."""

    service_label: str = "app.kubernetes.io/name"
    version_label: str = "app.kubernetes.io/version"
    part_of_label: str = "app.kubernetes.io/part-of"
    part_of: str = "grpcmesh"
    """Every mesh pod has ``part_of_label: part_of``; it selects mesh pods only."""
    component_label: str = "app.kubernetes.io/component"
    control_plane_component: str = "control-plane"
    ingress_component: str = "ingress"
    """Ingress gateway pods' component; their Envoy gets ``proxy="ingress"``."""
    app_metrics_port: str = "metrics"
    envoy_stats_port: str = "envoy-stats"
    """A sidecar port serving only ``/stats/prometheus`` (never expose Envoy's whole admin)."""
    control_plane_metrics_port: str = "admin"


def _meta_label(pod_label: str) -> str:
    # Prometheus' Kubernetes discovery sanitises label names: every invalid character becomes _.
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


def job_relabelings(
    job: Job, conventions: PodConventions = PodConventions()
) -> list[dict[str, Any]]:
    """What gives a pod's scraped series the scrape model's labels for ``job``: ``job``,
    ``replica`` and, for mesh pods, ``service`` and ``version`` from the pod's labels (and
    ``proxy`` for Envoy). Shared by the PodMonitors and the operator's ServiceMonitors (their
    targets are pods too), so both feed the same dashboards and alerts."""
    c = conventions
    replica: dict[str, Any] = {
        "sourceLabels": ["__meta_kubernetes_pod_name"],
        "targetLabel": Label.REPLICA.value,
    }
    named: dict[str, Any] = {"targetLabel": "job", "replacement": job.value, "action": "replace"}
    if job is Job.CONTROL_PLANE:
        return [named, replica]
    mesh: list[dict[str, Any]] = [
        named,
        {"sourceLabels": [_meta_label(c.service_label)], "targetLabel": Label.SERVICE.value},
        {"sourceLabels": [_meta_label(c.version_label)], "targetLabel": Label.VERSION.value},
        replica,
    ]
    if job is Job.APP:
        return mesh
    return [
        *mesh,
        {
            "targetLabel": Label.PROXY.value,
            "replacement": ProxyKind.SIDECAR.value,
            "action": "replace",
        },
        {  # replace only acts when the regex matches: gateways become "ingress"
            "sourceLabels": [_meta_label(c.component_label)],
            "regex": c.ingress_component,
            "targetLabel": Label.PROXY.value,
            "replacement": ProxyKind.INGRESS.value,
            "action": "replace",
        },
    ]


def pod_monitors(
    namespace: str | None = None,
    conventions: PodConventions = PodConventions(),  # frozen, so one shared default is safe
    *,
    labels: Mapping[str, str] | None = None,
    interval: str | None = None,
) -> list[dict[str, Any]]:
    """PodMonitors (monitoring.coreos.com/v1) for the three jobs, with the local mode's labels.

    ``labels`` go on each PodMonitor's metadata (e.g. the ``release`` label a Prometheus'
    ``podMonitorSelector`` matches); ``interval`` overrides Prometheus' scrape interval.
    """
    if interval is not None:
        _check_duration("interval", interval)
    c = conventions

    def endpoint(job: Job, port: str) -> dict[str, Any]:
        ep: dict[str, Any] = {
            "port": port,
            "path": METRICS_PATHS[job],
            "relabelings": job_relabelings(job, c),
        }
        if interval is not None:
            ep["interval"] = interval
        return ep

    mesh_pods = {
        "matchExpressions": [
            {"key": c.part_of_label, "operator": "In", "values": [c.part_of]},
            {"key": c.component_label, "operator": "NotIn", "values": [c.control_plane_component]},
        ]
    }
    control_plane = {
        "matchLabels": {c.part_of_label: c.part_of, c.component_label: c.control_plane_component}
    }
    specs: list[tuple[Job, dict[str, Any], dict[str, Any]]] = [
        (Job.APP, mesh_pods, endpoint(Job.APP, c.app_metrics_port)),
        (Job.ENVOY, mesh_pods, endpoint(Job.ENVOY, c.envoy_stats_port)),
        (
            Job.CONTROL_PLANE,
            control_plane,
            endpoint(Job.CONTROL_PLANE, c.control_plane_metrics_port),
        ),
    ]
    monitors = []
    for name, selector, ep in specs:
        metadata: dict[str, Any] = {"name": name.value}
        if namespace is not None:
            metadata["namespace"] = namespace
        if labels:
            metadata["labels"] = dict(labels)
        monitors.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PodMonitor",
                "metadata": metadata,
                "spec": {"selector": selector, "podMetricsEndpoints": [ep]},
            }
        )
    return monitors
