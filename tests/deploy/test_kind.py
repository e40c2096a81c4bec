"""manifests/kind/cluster.yaml: a kind cluster config kind accepts, named so its kube context
activates the skaffold profile `kind`, on a pinned Kubernetes 1.31 node image."""

from __future__ import annotations

import re

import yaml

from .checks import REPO, skaffold_config

CLUSTER = REPO / "manifests" / "kind" / "cluster.yaml"
NODE_FIELDS = {
    "role",
    "image",
    "extraPortMappings",
    "extraMounts",
    "labels",
    "kubeadmConfigPatches",
}


def test_cluster_config_parses_with_the_fields_kind_needs() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert set(config) <= {"kind", "apiVersion", "name", "nodes", "networking", "featureGates"}
    nodes = config["nodes"]
    assert [n["role"] for n in nodes].count("control-plane") >= 1
    for node in nodes:
        assert set(node) <= NODE_FIELDS, node
        assert node["role"] in ("control-plane", "worker")
        assert re.fullmatch(r"kindest/node:v1\.31\.\d+(@sha256:[0-9a-f]{64})?", node["image"])
        for mapping in node.get("extraPortMappings", []):
            assert set(mapping) <= {"containerPort", "hostPort", "listenAddress", "protocol"}


def test_its_context_activates_the_kind_profile() -> None:
    name = yaml.safe_load(CLUSTER.read_text())["name"]
    (profile,) = [p for p in skaffold_config()["profiles"] if p["name"] == "kind"]
    assert {"kubeContext": f"kind-{name}"} in profile["activation"]
