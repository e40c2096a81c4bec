"""The real-control-plane benchmark (``bench/operator_apply_kube.py``) at N=5, so its code
path (the operator process, the stand-in nodes and sidecars, the milestones) cannot rot. Its
numbers are not asserted beyond their order: the machine is shared."""

from __future__ import annotations

import asyncio
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
    assert any("meshservices" in row for row in result["api_server_requests"]), result
    # The stand-in nodes are gone again: other tests share this control plane.
    nodes = {item["metadata"]["name"] for item in kube.items("nodes")}
    assert not {name for name in nodes if name.startswith(namespace)}, nodes
