"""The scrape model: local mode's prometheus.yml and the cluster's PodMonitors give every target
the same job and labels. (``promtool check config`` runs in tests/integration/test_promtool.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from grpcmesh_control.mesh.translate.naming import NodeKind
from grpcmesh_control.observability import (
    AppTarget,
    ControlPlaneTarget,
    Job,
    Label,
    PodConventions,
    ProxyKind,
    ProxyTarget,
    ScrapeModelError,
    ScrapeTargets,
    pod_monitors,
    prometheus_config,
)
from tests.kube_schemas import crd_errors


@dataclass(frozen=True)
class Replica:
    """The fields of the launcher's ``ReplicaState`` that ``from_replicas`` reads."""

    service: str
    version: str
    replica: str
    metrics: str
    sidecar_admin: str


REPLICAS = (
    Replica("payments", "v1", "v1-0", "127.0.0.1:9101", "127.0.0.1:9201"),
    Replica("payments", "v2", "v2-0", "127.0.0.1:9102", "127.0.0.1:9202"),
    Replica("catalog", "v1", "v1-0", "127.0.0.1:9103", "127.0.0.1:9203"),
)


@pytest.fixture
def targets() -> ScrapeTargets:
    return ScrapeTargets.from_replicas(
        REPLICAS, control_plane="127.0.0.1:9901", ingresses={"gateway": "127.0.0.1:9902"}
    )


def jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["job_name"]: c for c in config["scrape_configs"]}


def static(config: dict[str, Any], job: Job) -> dict[str, dict[str, str]]:
    """target address -> its labels."""
    return {
        target: entry["labels"]
        for entry in jobs(config)[job]["static_configs"]
        for target in entry["targets"]
    }


def test_three_jobs_with_their_paths(targets: ScrapeTargets) -> None:
    config = prometheus_config(targets)
    assert {name: c["metrics_path"] for name, c in jobs(config).items()} == {
        "grpcmesh-app": "/metrics",
        "grpcmesh-envoy": "/stats/prometheus",
        "grpcmesh-control-plane": "/metrics",
    }


def test_apps_are_labelled_service_version_replica(targets: ScrapeTargets) -> None:
    assert static(prometheus_config(targets), Job.APP) == {
        "127.0.0.1:9101": {"service": "payments", "version": "v1", "replica": "v1-0"},
        "127.0.0.1:9102": {"service": "payments", "version": "v2", "replica": "v2-0"},
        "127.0.0.1:9103": {"service": "catalog", "version": "v1", "replica": "v1-0"},
    }


def test_envoys_are_labelled_like_their_app_plus_proxy_kind(targets: ScrapeTargets) -> None:
    envoys = static(prometheus_config(targets), Job.ENVOY)
    assert envoys["127.0.0.1:9201"] == {
        "service": "payments",
        "version": "v1",
        "replica": "v1-0",
        "proxy": "sidecar",
    }
    # An ingress belongs to no MeshService version: no version label at all.
    assert envoys["127.0.0.1:9902"] == {"service": "gateway", "replica": "0", "proxy": "ingress"}
    assert len(envoys) == len(REPLICAS) + 1


def test_control_plane_target(targets: ScrapeTargets) -> None:
    assert static(prometheus_config(targets), Job.CONTROL_PLANE) == {
        "127.0.0.1:9901": {"replica": "0"}
    }


def test_intervals_and_rule_files() -> None:
    config = prometheus_config(ScrapeTargets(), rule_files=["/run/grpcmesh.rules.yaml"])
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    assert config["rule_files"] == ["/run/grpcmesh.rules.yaml"]
    config = prometheus_config(ScrapeTargets(), "15s", evaluation_interval="30s")
    assert config["global"] == {"scrape_interval": "15s", "evaluation_interval": "30s"}
    assert "rule_files" not in config


def test_every_job_is_present_even_without_targets() -> None:
    config = prometheus_config(ScrapeTargets())
    assert {name: c["static_configs"] for name, c in jobs(config).items()} == {
        job.value: [] for job in Job
    }


def test_plain_yaml_can_dump_it(targets: ScrapeTargets) -> None:
    # The launcher writes it with yaml.safe_dump, which refuses str subclasses (StrEnum members).
    config = prometheus_config(targets, rule_files=["rules.yaml"])
    assert yaml.safe_load(yaml.safe_dump(config)) == config


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost:", ":9090", "http://x:1", "a b:1"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ScrapeModelError, match="host:port"):
        AppTarget(address, "payments", "v1", "v1-0")


def test_ipv6_and_names_are_addresses() -> None:
    ProxyTarget("[::1]:15000", "payments", "v1-0")
    ControlPlaneTarget("grpcmesh-control-plane.grpcmesh.svc:9901")


@pytest.mark.parametrize("interval", ["", "0", "1", "1 s", "-1s", "1.5s"])
def test_bad_intervals_are_refused(interval: str) -> None:
    with pytest.raises(ScrapeModelError, match="duration"):
        prometheus_config(ScrapeTargets(), interval)


def test_proxy_kinds_are_the_node_kinds_that_run_envoy() -> None:
    # A proxyless node is gRPC's xDS client inside an app: no Envoy to scrape.
    envoys = {k.value for k in NodeKind} - {NodeKind.PROXYLESS.value}
    assert {k.value for k in ProxyKind} == envoys


# --- cluster ------------------------------------------------------------------------------------


def test_pod_monitors_validate_against_the_crd() -> None:
    monitors = pod_monitors("grpcmesh", labels={"release": "kube-prometheus-stack"}, interval="15s")
    assert len(monitors) == len(Job)
    for monitor in monitors:
        assert crd_errors(monitor) == []  # closed: a field the API server prunes fails too
        assert monitor["metadata"]["labels"] == {"release": "kube-prometheus-stack"}


def relabel_targets(monitor: dict[str, Any]) -> dict[str, Any]:
    """targetLabel -> the relabeling rules that write it."""
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    found: dict[str, Any] = {}
    for rule in endpoint["relabelings"]:
        found.setdefault(rule["targetLabel"], []).append(rule)
    return found


def test_pod_monitors_set_the_local_jobs_and_labels() -> None:
    by_job = {}
    for monitor in pod_monitors():
        rules = relabel_targets(monitor)
        (job,) = rules.pop("job")
        by_job[job["replacement"]] = set(rules)
    assert by_job == {
        Job.APP.value: {Label.SERVICE, Label.VERSION, Label.REPLICA},
        Job.ENVOY.value: {Label.SERVICE, Label.VERSION, Label.REPLICA, Label.PROXY},
        Job.CONTROL_PLANE.value: {Label.REPLICA},
    }


def test_pod_monitors_read_the_conventional_pod_labels() -> None:
    conventions = PodConventions(service_label="grpcmesh.io/service", envoy_stats_port="stats")
    app, envoy, control_plane = pod_monitors(conventions=conventions)
    service = relabel_targets(app)["service"][0]
    # Kubernetes discovery turns every character a label name cannot hold into "_".
    assert service["sourceLabels"] == ["__meta_kubernetes_pod_label_grpcmesh_io_service"]
    assert envoy["spec"]["podMetricsEndpoints"][0]["port"] == "stats"
    assert envoy["spec"]["podMetricsEndpoints"][0]["path"] == "/stats/prometheus"
    # Apps and sidecars share pods; the control plane's pods are selected apart.
    assert app["spec"]["selector"] == envoy["spec"]["selector"]
    assert control_plane["spec"]["selector"] == {
        "matchLabels": {
            "app.kubernetes.io/part-of": "grpcmesh",
            "app.kubernetes.io/component": "control-plane",
        }
    }
    assert "namespace" not in app["metadata"]
