"""The chart's monitoring objects are the observability package's, with Helm metadata.

templates/monitoring/ builds PodMonitors, the operator's ServiceMonitor, the PrometheusRule and
the dashboard ConfigMaps from charts/grpcmesh/files/, which ``make chart-assets`` generates from
operator/grpcmesh_control/observability/. These tests render the chart (helm-python-sdk: the real
Helm engine, no cluster) and hold the result to the Python functions and the prometheus-operator
CRD schemas (../shared/contracts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.observability import Job, pod_monitors, prometheus_rule
from grpcmesh_control.observability.dashboards import build_dashboards, dashboard_configmaps
from scripts.chart_assets import (
    CHART_CONVENTIONS,
    DASHBOARDS_DIR,
    chart_assets,
    scrape_data,
    stale_files,
)
from tests.chart import chart
from tests.kube_schemas import crd_errors

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "grpcmesh"
RELEASE, NAMESPACE = "grpcmesh", "grpcmesh-system"
RELEASE_LABEL = {"release": "kube-prometheus-stack"}  # values.yaml's monitoring.labels
KUBERNETES = "1.31.0"
CONFIGMAP_LIMIT = 1024 * 1024  # bytes of data a ConfigMap may hold
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}

ALL_ON: dict[str, Any] = {
    "monitoring": {
        "podMonitors": {"enabled": True},
        "prometheusRules": {"enabled": True},
        "dashboards": {"enabled": True},
    }
}
SERVICE_MONITORS: dict[str, Any] = {"monitoring": {"serviceMonitors": {"enabled": True}}}


# --- local fixtures -----------------------------------------------------------------------------


def render(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Every object the chart renders with ``values`` (over values.yaml), in template order."""
    return chart.render(values or {}, release=name, namespace=namespace)


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def dashboard_maps(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: o
        for name, o in of_kind(objects, "ConfigMap").items()
        if "grafana_dashboard" in o["metadata"].get("labels", {})
    }


@pytest.fixture(scope="module")
def monitoring_on() -> list[dict[str, Any]]:
    return render(ALL_ON)


@pytest.fixture(scope="module")
def service_monitors_on() -> list[dict[str, Any]]:
    return render(SERVICE_MONITORS)


@pytest.fixture(scope="module")
def dashboards() -> tuple[Any, ...]:
    return build_dashboards(load_catalog())


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        present, value = key in labels, labels.get(key)
        matched = {
            "In": present and value in expression.get("values", []),
            "NotIn": not present or value not in expression.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not matched:
            return False
    return True


# --- generated files ----------------------------------------------------------------------------


def test_chart_files_are_a_fresh_generation() -> None:
    files = CHART / "files"
    assets = chart_assets()
    outdated = [
        relative
        for relative, content in assets.items()
        if not (files / relative).is_file() or (files / relative).read_text() != content
    ]
    outdated += [p.relative_to(files).as_posix() for p in stale_files(files, assets)]
    assert outdated == [], (
        f"charts/grpcmesh/files is out of date with operator/grpcmesh_control/observability "
        f"({', '.join(outdated)}): run `make chart-assets` and commit the result"
    )


def test_one_dashboard_file_per_dashboard(dashboards: tuple[Any, ...]) -> None:
    names = sorted(p.name for p in (CHART / "files" / DASHBOARDS_DIR).glob("*.json"))
    assert names == sorted(f"{board.uid}.json" for board in dashboards)


# --- off ----------------------------------------------------------------------------------------


def test_nothing_renders_by_default() -> None:
    objects = render()
    assert [o["kind"] for o in objects if o["kind"] in MONITORING_KINDS] == []
    assert dashboard_maps(objects) == {}


@pytest.mark.parametrize("section", sorted([*ALL_ON["monitoring"], "serviceMonitors"]))
def test_each_switch_renders_only_its_objects(section: str) -> None:
    objects = render({"monitoring": {section: {"enabled": True}}})
    expected = {
        "podMonitors": {"PodMonitor"},
        "serviceMonitors": {"ServiceMonitor"},
        "prometheusRules": {"PrometheusRule"},
        "dashboards": set(),
    }[section]
    assert {o["kind"] for o in objects if o["kind"] in MONITORING_KINDS} == expected
    assert bool(dashboard_maps(objects)) == (section == "dashboards")


# --- on: every object ---------------------------------------------------------------------------


def monitoring_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in MONITORING_KINDS] + list(
        dashboard_maps(objects).values()
    )


def test_all_kinds_render(monitoring_on: list[dict[str, Any]]) -> None:
    kinds = [o["kind"] for o in monitoring_objects(monitoring_on)]
    assert kinds.count("PodMonitor") == len(Job)
    assert kinds.count("ServiceMonitor") == 0
    assert kinds.count("PrometheusRule") == 1
    assert kinds.count("ConfigMap") == len(list((CHART / "files" / DASHBOARDS_DIR).glob("*.json")))


def test_monitoring_objects_validate_against_the_crds(
    monitoring_on: list[dict[str, Any]], service_monitors_on: list[dict[str, Any]]
) -> None:
    for obj in monitoring_on + service_monitors_on:
        if obj["kind"] in MONITORING_KINDS:
            # Closed schemas: a field the API server would prune fails too.
            assert crd_errors(obj) == [], obj["metadata"]["name"]


def test_dashboard_configmaps_validate(monitoring_on: list[dict[str, Any]]) -> None:
    for obj in dashboard_maps(monitoring_on).values():
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_every_object_carries_the_release_and_chart_labels(
    monitoring_on: list[dict[str, Any]], service_monitors_on: list[dict[str, Any]]
) -> None:
    for obj in monitoring_objects(monitoring_on + service_monitors_on):
        labels = obj["metadata"]["labels"]
        assert labels.items() >= RELEASE_LABEL.items(), obj["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "grpcmesh"
        assert labels["helm.sh/chart"] == "grpcmesh-0.1.0"
        assert obj["metadata"]["namespace"] == NAMESPACE


def test_monitoring_labels_come_from_values() -> None:
    labels = {"release": "prom", "team": "mesh"}
    objects = render({"monitoring": {**ALL_ON["monitoring"], "labels": labels}})
    for obj in monitoring_objects(objects):
        assert obj["metadata"]["labels"].items() >= labels.items()


def test_names_follow_the_release() -> None:
    objects = render(ALL_ON, name="shop")
    names = {o["metadata"]["name"] for o in monitoring_objects(objects)}
    assert names >= {"shop-grpcmesh", "shop-grpcmesh-app", "shop-grpcmesh-overview-dashboard"}
    assert all(n.startswith("shop-grpcmesh") for n in names)


# --- on: the same content as the Python functions -----------------------------------------------


def test_prometheus_rule_is_the_generated_one(monitoring_on: list[dict[str, Any]]) -> None:
    (rule,) = of_kind(monitoring_on, "PrometheusRule").values()
    expected = prometheus_rule(namespace=NAMESPACE, labels=RELEASE_LABEL)
    assert rule["metadata"]["name"] == expected["metadata"]["name"]
    assert rule["metadata"]["labels"].items() >= expected["metadata"]["labels"].items()
    assert rule["spec"] == expected["spec"]


def test_dashboard_configmaps_are_the_generated_ones(
    monitoring_on: list[dict[str, Any]], dashboards: tuple[Any, ...]
) -> None:
    expected = {
        m["metadata"]["name"]: m
        for m in dashboard_configmaps(dashboards, namespace=NAMESPACE, labels=RELEASE_LABEL)
    }
    rendered = dashboard_maps(monitoring_on)
    assert sorted(rendered) == sorted(expected)
    for name, config_map in rendered.items():
        want = expected[name]
        assert config_map["metadata"]["labels"].items() >= want["metadata"]["labels"].items()
        assert config_map["data"].keys() == want["data"].keys()
        for key, text in config_map["data"].items():
            assert json.loads(text) == json.loads(want["data"][key]), key
            assert text == want["data"][key], f"{key}: same JSON, different text"


def test_dashboard_configmaps_fit_the_size_limit(monitoring_on: list[dict[str, Any]]) -> None:
    for name, config_map in dashboard_maps(monitoring_on).items():
        size = sum(len(k.encode()) + len(v.encode()) for k, v in config_map["data"].items())
        # Half the limit: a dashboard that grows this much should be split, not squeezed in.
        assert size < CONFIGMAP_LIMIT // 2, f"{name}: {size} bytes of data"


def test_dashboards_label_and_namespace_come_from_values() -> None:
    dashboards_values = {
        "enabled": True,
        "label": "grafana_dashboard_grpcmesh",
        "labelValue": "yes",
        "namespace": "monitoring",
    }
    objects = render({"monitoring": {"dashboards": dashboards_values}})
    maps = [o for o in of_kind(objects, "ConfigMap").values() if "data" in o]
    maps = [m for m in maps if "grafana_dashboard_grpcmesh" in m["metadata"]["labels"]]
    assert maps
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard_grpcmesh"] == "yes"
        assert config_map["metadata"]["namespace"] == "monitoring"


def chart_pod_monitors(interval: str | None = None) -> dict[str, dict[str, Any]]:
    """``pod_monitors()`` as the chart should render them, by name."""
    monitors = pod_monitors(
        NAMESPACE, CHART_CONVENTIONS, labels=RELEASE_LABEL, interval=interval or None
    )
    return {m["metadata"]["name"]: m for m in monitors}


@pytest.mark.parametrize("interval", ["", "15s", "1m30s"])
def test_pod_monitors_are_the_generated_ones(interval: str) -> None:
    objects = render({"monitoring": {"podMonitors": {"enabled": True, "interval": interval}}})
    rendered = of_kind(objects, "PodMonitor")
    expected = chart_pod_monitors(interval)
    assert sorted(rendered) == sorted(expected)
    for name, monitor in rendered.items():
        spec = dict(monitor["spec"])
        # Mesh workloads live in any namespace; the chart's monitors live in the release's.
        assert spec.pop("namespaceSelector") == {"any": True}
        assert spec == expected[name]["spec"]
        assert monitor["metadata"]["labels"].items() >= RELEASE_LABEL.items()


def test_both_scrape_modes_at_once_are_refused() -> None:
    """PodMonitors and the operator's per-MeshService ServiceMonitors select the same pods:
    both on would ingest every series twice (and double the control plane's ``sum()``s)."""
    both = {"monitoring": {"podMonitors": {"enabled": True}, "serviceMonitors": {"enabled": True}}}
    with pytest.raises(helm_python.HelmError, match="twice"):
        render(both)


@pytest.mark.parametrize("interval", ["30 seconds", "1s1m", "0"])
def test_a_bad_interval_fails_the_render(interval: str) -> None:
    """Prometheus' durations: units largest first (the CRD's pattern), never 0."""
    with pytest.raises(helm_python.HelmError, match="interval"):
        render({"monitoring": {"podMonitors": {"enabled": True, "interval": interval}}})


def test_the_service_monitor_scrapes_the_control_service(
    service_monitors_on: list[dict[str, Any]],
) -> None:
    (monitor,) = of_kind(service_monitors_on, "ServiceMonitor").values()
    services = of_kind(service_monitors_on, "Service")
    selected = [
        name
        for name, service in services.items()
        if selects(monitor["spec"]["selector"], service["metadata"].get("labels", {}))
    ]
    assert selected == [f"{RELEASE}-control"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    control = services[f"{RELEASE}-control"]
    assert endpoint["port"] in {port.get("name") for port in control["spec"]["ports"]}
    # The operator serves the control plane's metrics: the PodMonitor's job and labels.
    (endpoint_wanted,) = chart_pod_monitors()[Job.CONTROL_PLANE]["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == endpoint_wanted["path"]
    assert endpoint["relabelings"] == endpoint_wanted["relabelings"]
    assert scrape_data()["controlPlaneEndpoint"] == {
        "path": endpoint_wanted["path"],
        "relabelings": endpoint_wanted["relabelings"],
    }


def pod_template(objects: list[dict[str, Any]], deployment: str) -> tuple[dict[str, str], set[str]]:
    """A Deployment's pod labels and container port names."""
    template = of_kind(objects, "Deployment")[deployment]["spec"]["template"]
    ports = {
        port["name"]
        for container in template["spec"]["containers"]
        for port in container.get("ports", [])
        if "name" in port
    }
    return template["metadata"]["labels"], ports


def test_the_chart_pods_fit_the_scrape_model(monitoring_on: list[dict[str, Any]]) -> None:
    """CHART_CONVENTIONS are the chart's labels and ports: the operator's pods are the control
    plane (never scraped as an app, though they carry part-of: grpcmesh too), the gateway's
    Envoys are ingress proxies."""
    monitors = chart_pod_monitors()
    app, envoy, control_plane = (monitors[job] for job in Job)
    c = CHART_CONVENTIONS

    labels, ports = pod_template(monitoring_on, f"{RELEASE}-operator")
    assert selects(control_plane["spec"]["selector"], labels)
    assert not selects(app["spec"]["selector"], labels)
    assert c.control_plane_metrics_port in ports

    labels, ports = pod_template(monitoring_on, f"{RELEASE}-gateway")
    assert selects(envoy["spec"]["selector"], labels)
    assert labels[c.component_label] == c.ingress_component
    assert c.envoy_stats_port in ports
    assert c.app_metrics_port not in ports
