"""Operators that start and stop within a test, on the real control plane: a restart after
changes and drift made while it was down, the first snapshot a (re)started operator serves,
and ServiceMonitors rendered only when the Prometheus Operator's CRD is installed.

Each test runs its own operator, so none may overlap another module's; each deletes its
MeshServices afterwards (service names are mesh-wide and the next operator lists all).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from grpcmesh_control.cluster.controller import Operator
from grpcmesh_control.cluster.objects.kinds import SERVICE_MONITOR_CRD
from tests.cluster.kube import KubeCluster, wait_until
from tests.cluster.operator_harness import (
    condition,
    example,
    names,
    operator_settings,
    slice_of,
    wait_condition,
    wait_names,
)
from tests.operator_thread import serving
from tests.shared import shared_path

PAYMENTS = {"payments-v1", "payments-v2"}


@pytest.fixture
def ns(kube: KubeCluster, namespace: str) -> Iterator[str]:
    yield namespace
    kube.kubectl("delete", "meshservices", "--all", "-n", namespace, "--wait=true")


def established(kube: KubeCluster, crd: str) -> bool:
    conditions = ((kube.get("crd", crd) or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def test_a_restarted_operator_converges(kube: KubeCluster, ns: str) -> None:
    """Stopped, then changed and drifted while down: the next operator resumes, applies the
    change and repairs the drift."""
    with serving(operator_settings(kube)):
        kube.apply([example("payments"), example("catalog")], namespace=ns)
        wait_names(kube, "deployments", ns, PAYMENTS | {"catalog-v1"})

    patch = json.dumps({"spec": {"replicas": 2}})
    kube.kubectl("patch", "meshservice", "payments", "-n", ns, "--type=merge", "-p", patch)
    kube.kubectl("delete", "deployment", "catalog-v1", "-n", ns)  # drift while nobody watches

    with serving(operator_settings(kube)):
        wait_names(kube, "deployments", ns, PAYMENTS | {"catalog-v1"})

        def scaled() -> bool:
            found = [kube.get("deployment", n, ns) for n in PAYMENTS]
            return all(d is not None and d["spec"]["replicas"] == 2 for d in found)

        wait_until(scaled, "payments scaled to 2 after the restart")
        wait_condition(kube, ns, "catalog", "Registered", ("True", "Registered"))
        body = wait_condition(kube, ns, "payments", "Registered", ("True", "Registered"))
        assert body["status"]["observedGeneration"] == body["metadata"]["generation"] == 2


def test_the_first_snapshot_holds_the_whole_mesh(kube: KubeCluster, ns: str) -> None:
    """Before its ADS server listens, a (re)started operator lists MeshServices and
    EndpointSlices: reconnecting sidecars get every service with its endpoints at once, not
    whatever kopf's watches have replayed yet (which would empty their clusters)."""
    kube.apply([example("payments"), example("orders")], namespace=ns)
    kube.apply([slice_of("payments-v1", ("127.0.0.1", True, False))], namespace=ns)
    seen: dict[str, Any] = {}

    def at_listen(op: Operator) -> None:  # the operator's thread, before kopf starts
        registry = op.publisher.registry
        seen["services"] = {s.name for s in registry.services} if registry else set()
        seen["keys"] = {n for n in ("payments", "orders") if op.state.service(ns, n)}
        seen["endpoints"] = op.publisher.inputs.endpoint_map.get("payments")

    with serving(operator_settings(kube), on_ready=at_listen):
        pass
    assert seen["keys"] == {"payments", "orders"}
    assert {"payments", "orders"} <= seen["services"]
    assert [e.address for e in seen["endpoints"]] == ["127.0.0.1"]


def test_service_monitors_asked_for_without_their_crd_are_skipped(
    kube: KubeCluster, ns: str
) -> None:
    """GRPCMESH_SERVICE_MONITOR on, but no Prometheus Operator in the cluster: the operator
    finds no CRD at start and renders none, instead of every MeshService failing to apply."""
    assert kube.get("crd", SERVICE_MONITOR_CRD) is None
    settings = operator_settings(kube)
    settings = replace(settings, render=replace(settings.render, service_monitor_crd=True))
    with serving(settings) as op:
        assert not op.settings.render.service_monitor_crd
        kube.apply([example("payments")], namespace=ns)
        wait_names(kube, "deployments", ns, PAYMENTS)
        body = wait_condition(kube, ns, "payments", "Registered", ("True", "Registered"))
        assert condition(body, "Degraded") == ("False", "AsExpected")


def test_service_monitors_are_applied_when_their_crd_exists(kube: KubeCluster, ns: str) -> None:
    """With the Prometheus Operator's own CRD installed, the flag stays on and each
    MeshService gets a ServiceMonitor the API server's schema for it accepts."""
    crd = shared_path(
        "contracts", "prometheus-operator", "monitoring.coreos.com_servicemonitors.yaml"
    )
    kube.kubectl("apply", "--server-side", "-f", str(crd))
    try:
        wait_until(lambda: established(kube, SERVICE_MONITOR_CRD), "the CRD Established")
        settings = operator_settings(kube)
        settings = replace(settings, render=replace(settings.render, service_monitor_crd=True))
        with serving(settings) as op:
            assert op.settings.render.service_monitor_crd
            kube.apply([example("payments")], namespace=ns)
            wait_until(
                lambda: names(kube, "servicemonitors", ns) == {"payments"},
                "payments' ServiceMonitor",
            )
            body = wait_condition(kube, ns, "payments", "Registered", ("True", "Registered"))
            assert condition(body, "Degraded") == ("False", "AsExpected")
        kube.kubectl("delete", "meshservices", "--all", "-n", ns, "--wait=true")
    finally:
        kube.kubectl("delete", "crd", SERVICE_MONITOR_CRD, "--wait=true")
