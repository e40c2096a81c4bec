"""The real-control-plane benchmark (``bench/operator_apply_kube.py``) at N=5, so its code
path (the operator process, the stand-in nodes and sidecars, the milestones) cannot rot. Its
numbers are not asserted beyond their order: the machine is shared."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from bench.operator_apply_kube import ApplyWith, measure
from tests.cluster.kube import KubeCluster

SERVICES = 5


def test_five_mesh_services_become_ready_on_stand_in_nodes(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    result = asyncio.run(
        measure(kube, SERVICES, namespace, tmp_path, timeout=120, apply_with=ApplyWith.KUBECTL)
    )
    assert result["converged"], result
    counts = result["counts"]
    for milestone in ("deployments available", "pods ready", "meshservices Ready"):
        assert counts[milestone] == SERVICES, (milestone, result)
    # Ready needs the rollout the real controllers made, reported by the stand-in kubelet,
    # and every stand-in sidecar's ACK.
    reached = result["milestones_s"]
    assert reached["pods ready"] <= reached["deployments available"]
    assert reached["deployments available"] <= reached["meshservices Ready"]
    assert result["stand_ins"]["sidecars"] == SERVICES
    assert result["stand_ins"]["responses_Cluster"] >= SERVICES
    assert result["operator"]["reconciles"] >= SERVICES
    assert result["cpu_s"]["operator"] > 0
    # The busiest requests by API-server seconds: with five services which kinds lead varies
    # from run to run (a ServiceAccount, a Deployment, a status patch), but they are ours.
    rows = result["api_server_requests"]
    written = ("meshservices", "deployments", "services", "serviceaccounts", "configmaps")
    assert rows and all(re.fullmatch(r"\S+ \S*: \d+ in [\d.]+ s", row) for row in rows), rows
    assert any(kind in row for row in rows for kind in written), rows
    # The stand-in nodes are gone again: other tests share this control plane.
    nodes = {item["metadata"]["name"] for item in kube.items("nodes")}
    assert not {name for name in nodes if name.startswith(namespace)}, nodes
