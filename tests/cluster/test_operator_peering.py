"""kopf peering on the real control plane: replicas record themselves in a
``ClusterKopfPeering`` (our CRD for kopf's resource), only the highest-priority one handles
MeshServices and is ready, and when it stops the other takes over."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from grpcmesh_control.cluster.controller import Operator
from tests.cluster.kube import KubeCluster, wait_until
from tests.cluster.operator_harness import (
    NEVER,
    condition,
    example,
    operator_settings,
    settled,
    slice_of,
    wait_condition,
    wait_status,
)
from tests.operator_thread import OperatorThread, serving


@pytest.fixture
def peering(kube: KubeCluster, namespace: str) -> Iterator[str]:
    """A peering object of this test's own (cluster-scoped, so named after the namespace),
    as the chart creates one; the test's MeshServices are deleted before it goes."""
    name = f"peering-{namespace}"
    kube.apply(
        [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}]
    )
    yield name
    kube.kubectl("delete", "meshservices", "--all", "-n", namespace, "--wait=true")
    kube.kubectl("delete", "clusterkopfpeering", name, "--wait=false")


def peers(kube: KubeCluster, peering: str) -> dict[str, Any]:
    """kopf's records in the peering object: identity -> {priority, lifetime, lastseen}."""
    found: dict[str, Any] = (kube.get("clusterkopfpeering", peering) or {}).get("status") or {}
    return found


def readiness(op: Operator) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_the_highest_priority_replica_reconciles(
    kube: KubeCluster, namespace: str, peering: str
) -> None:
    ns = namespace
    high_settings = operator_settings(
        kube, peering=peering, peering_priority=20, resync_interval=NEVER
    )
    high = OperatorThread(high_settings)
    high.start()
    try:
        assert high.ready.wait(30), "the priority-20 replica did not start"
        wait_until(
            lambda: any(p.get("priority") == 20 for p in peers(kube, peering).values()),
            "the priority-20 replica in the peering object",
        )
        with serving(
            operator_settings(kube, peering=peering, peering_priority=10, resync_interval=NEVER)
        ) as low:
            wait_until(
                lambda: {p.get("priority") for p in peers(kube, peering).values()} == {10, 20},
                "both replicas in the peering object",
            )
            # Only the active replica is ready: the Service sends xDS and webhooks there.
            wait_until(lambda: readiness(high.operator) == 200, "the active replica ready")
            assert readiness(low) == 503

            kube.apply([example("payments")], namespace=ns)
            wait_condition(kube, ns, "payments", "Registered", ("True", "Registered"))
            assert (ns, "payments") in high.operator.reconciler.known()
            settled(high.operator)
            # The paused replica never saw it: no reconcile, nothing in its registry.
            assert (ns, "payments") not in low.reconciler.known()
            assert low.state.service(ns, "payments") is None

            # The active replica's status follower writes (it checked the peering itself).
            kube.apply([slice_of("payments-v1", ("127.0.0.1", True, False))], namespace=ns)
            wait_status(
                kube,
                ns,
                "payments",
                "the endpoint in payments' status",
                lambda b: b["status"].get("endpoints") == {"ready": 1, "total": 1},
                timeout=15,
            )

            # The active replica goes: its record leaves, the other resumes every MeshService.
            high.stop()
            high.join(30)
            assert not high.alive, "the priority-20 replica did not stop"
            wait_until(
                lambda: {p.get("priority") for p in peers(kube, peering).values()} == {10},
                "only the priority-10 replica left in the peering object",
            )
            wait_until(lambda: readiness(low) == 200, "the remaining replica ready")
            wait_until(
                lambda: (ns, "payments") in low.reconciler.known(),
                "payments resumed by the priority-10 replica",
            )
            kube.apply([slice_of("payments-v1", ("127.0.0.1", False, True))], namespace=ns)
            body = wait_status(
                kube,
                ns,
                "payments",
                "the drained endpoint, counted by the new active replica",
                lambda b: b["status"].get("endpoints") == {"ready": 0, "total": 1},
                timeout=15,
            )
            assert condition(body, "Registered") == ("True", "Registered")
    finally:
        high.stop()
        high.join(30)
        high.raise_failure()
