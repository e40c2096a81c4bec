"""``grpcmesh status --cluster`` against the real API server, where the operator is absent or
the caller lacks RBAC: what it still shows and how it says what is missing. (With the operator
running as a pod, ``test_end_to_end.py`` shows the full picture through the service proxy.)"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.kube import KubeCluster
from tests.shared import REPO, tool


def grpcmesh_status(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("grpcmesh"), "status", "--cluster", *args],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_the_operator_it_lists_the_api_and_names_what_is_missing(
    kube: KubeCluster, namespace: str
) -> None:
    example = yaml.safe_load((REPO / "manifests" / "examples" / "catalog.yaml").read_text())
    kube.apply([example], namespace=namespace)
    run = grpcmesh_status(
        kube.kubeconfig, "--json", "-n", namespace,
        "--operator-namespace", namespace, "--operator-service", "no-operator",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    assert [(s["namespace"], s["name"]) for s in doc["services"]] == [(namespace, "catalog")]
    assert doc["control_plane_reachable"] is False
    problems = "\n".join(doc["problems"])
    # The API server's own answer for the proxied Service, not a client stack trace.
    assert f"services/http:no-operator:metrics/proxy/status in {namespace}: 404" in problems
    assert 'services "no-operator" not found' in problems
    assert f"{namespace}/catalog not Ready (no status yet)" in problems
    assert f"{namespace}/catalog has no pods" in problems


def test_a_caller_without_rbac_is_told_what_it_may_not_read(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    kubeconfig = kube.kubeconfig_for(kube.token("nobody", namespace), tmp_path / "kubeconfig")
    run = grpcmesh_status(kubeconfig, "-n", namespace)
    assert run.returncode == 2, run.stdout
    assert "403 Forbidden" in run.stderr
    assert (
        f'meshservices.grpcmesh.io is forbidden: User "system:serviceaccount:{namespace}:nobody"'
        in (run.stderr)
    )


def test_an_unknown_context_is_refused_by_name(kube: KubeCluster) -> None:
    run = grpcmesh_status(kube.kubeconfig, "--context", "no-such-context")
    assert run.returncode == 2
    assert "no-such-context" in run.stderr
    assert "Traceback" not in run.stderr
