"""The tier's own footing: the control plane is real, and our CRDs are served by it."""

from __future__ import annotations

from tests.cluster.kube import KubeCluster, KubectlError
from tests.shared import REPO


def test_examples_apply_into_any_namespace(kube: KubeCluster, namespace: str) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(REPO / "manifests" / "examples"))
    names = {item["metadata"]["name"] for item in kube.items("meshservices", namespace)}
    assert names == {"catalog", "inventory", "orders", "payments"}


def test_the_api_server_refuses_an_unknown_field(kube: KubeCluster, namespace: str) -> None:
    doc = {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": "typo"},
        "spec": {"grpc": {"port": 50051, "services": ["a.B"]}, "replicaz": 2},
    }
    try:
        kube.apply([doc], namespace=namespace)
    except KubectlError as exc:
        assert "replicaz" in exc.stderr
    else:
        raise AssertionError("an unknown spec field was accepted")
