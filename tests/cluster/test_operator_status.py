"""Status follows events, not the periodic resync, on the real control plane: EndpointSlice
changes, a Deployment's rollout (counted by the real ReplicaSet and Deployment controllers from
pods the tests mark Ready as a kubelet would) and a sidecar's ACK reach the MeshService's
status in seconds while the resync interval is an hour. And EndpointSlices reach a real Envoy
through the operator's ADS server.

One operator serves the whole module (each test has its own namespace and deletes its
MeshServices before the next, as service names are mesh-wide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from grpcmesh_control.cluster.controller import Operator
from tests.cluster.kube import KubeCluster
from tests.cluster.operator_harness import (
    NEVER,
    condition,
    example,
    mesh_services_removed,
    operator_settings,
    settled,
    slice_of,
    wait_names,
    wait_status,
)
from tests.integration.test_control_plane_envoy import Envoy, running_envoy
from tests.loopback import free_port, poll
from tests.operator_thread import serving

WITHIN = 15.0  # seconds: far below the resync interval (an hour); the machine may be busy
SHOP = ("catalog", "inventory", "payments", "orders")
SHOP_DEPLOYMENTS = {"catalog-v1", "inventory-v1", "orders-v1", "payments-v1", "payments-v2"}


@pytest.fixture(scope="module")
def operator(kube: KubeCluster) -> Iterator[Operator]:
    """An operator whose periodic resync never runs during the module."""
    with serving(operator_settings(kube, resync_interval=NEVER)) as op:
        yield op


@pytest.fixture
def ns(kube: KubeCluster, namespace: str, operator: Operator) -> Iterator[str]:
    with mesh_services_removed(kube, namespace, operator):
        yield namespace


def endpoints_are(ready: int, total: int) -> Callable[[dict[str, Any]], bool]:
    return lambda b: (b.get("status") or {}).get("endpoints") == {"ready": ready, "total": total}


def test_endpoint_slice_changes_move_the_status(kube: KubeCluster, ns: str) -> None:
    kube.apply([example("payments")], namespace=ns)
    wait_names(kube, "deployments", ns, {"payments-v1", "payments-v2"})
    wait_status(kube, ns, "payments", "Registered", lambda b: condition(b, "Registered"))
    kube.set_pods_ready(ns, "grpcmesh.io/service=payments")

    kube.apply([slice_of("payments-v1", ("127.0.0.1", True, False))], namespace=ns)
    body = wait_status(kube, ns, "payments", "one ready endpoint", endpoints_are(1, 1), WITHIN)
    # The same pass read the rollout back: only the ACK is missing.
    assert condition(body, "Ready") == ("False", "AwaitingAck")

    kube.apply([slice_of("payments-v1", ("127.0.0.1", False, True))], namespace=ns)
    body = wait_status(kube, ns, "payments", "the endpoint drained", endpoints_are(0, 1), WITHIN)
    assert condition(body, "Ready") == ("False", "NoReadyEndpoints")

    kube.kubectl("delete", "endpointslice", "payments-v1-abcde", "-n", ns)
    wait_status(kube, ns, "payments", "no endpoints", endpoints_are(0, 0), WITHIN)


def test_rollout_progress_moves_the_status(kube: KubeCluster, ns: str, operator: Operator) -> None:
    """A rollout that changes no endpoint (the new pods are not ready yet, then they are, then
    one is not) still moves Ready: the Deployment's own status events refresh its owner."""
    kube.apply([example("catalog")], namespace=ns)
    wait_names(kube, "deployments", ns, {"catalog-v1"})
    kube.apply([slice_of("catalog-v1", ("127.0.0.1", True, False))], namespace=ns)
    wait_status(
        kube,
        ns,
        "catalog",
        "rolling out",
        lambda b: condition(b, "Ready") == ("False", "Progressing") and endpoints_are(1, 1)(b),
    )
    pods = kube.set_pods_ready(ns, "grpcmesh.io/service=catalog")
    assert len(pods) == 2  # catalog's replicas, created by the real ReplicaSet controller
    wait_status(
        kube,
        ns,
        "catalog",
        "rolled out, awaiting the ACK",
        lambda b: condition(b, "Ready") == ("False", "AwaitingAck"),
        WITHIN,
    )
    # Once kopf is done with the creation, one pod stops being ready while the EndpointSlice
    # keeps its ready address: only the Deployment's event can tell.
    settled(operator)
    kube.kubectl("label", "pod", pods[0], "-n", ns, "probe=failing")
    kube.set_pods_ready(ns, "probe=failing", ready=False)
    wait_status(
        kube,
        ns,
        "catalog",
        "a replica unavailable",
        lambda b: condition(b, "Ready") == ("False", "Progressing"),
        WITHIN,
    )


async def flags(envoy: Envoy, cluster: str, host: str) -> str | None:
    return (await envoy.hosts(cluster)).get(host)


@pytest.mark.slow
async def test_endpoint_slices_reach_envoy_and_its_ack_the_status(
    kube: KubeCluster, ns: str, operator: Operator, tmp_path: Path
) -> None:
    """The orders sidecar (a real Envoy, ``sidecar~orders~0``) subscribes to the operator's
    ADS server. Slices of ``payments-v1`` are added, drained (terminating: not ready) and
    removed; each step shows in Envoy's ``/clusters``. Then orders becomes Ready on the
    sidecar's ACK with the ACKed version, with no resync in between."""
    kube.apply([example(name) for name in SHOP], namespace=ns)
    wait_names(kube, "deployments", ns, SHOP_DEPLOYMENTS)
    kube.set_pods_ready(ns, "grpcmesh.io/service=orders")
    kube.apply([slice_of("orders-v1", ("127.0.0.1", True, False), port=free_port())], namespace=ns)
    body = wait_status(
        kube,
        ns,
        "orders",
        "awaiting the ACK",
        lambda b: condition(b, "Ready") == ("False", "AwaitingAck"),
    )
    assert "ackedVersion" not in body["status"]

    cluster, port = "payments|v1", free_port()
    host = f"127.0.0.1:{port}"
    async with running_envoy(tmp_path, f"127.0.0.1:{operator.xds_port}") as envoy:

        async def has_cluster() -> bool:
            status, _ = await envoy.get("/ready")
            return status == 200 and cluster in await envoy.clusters()

        await poll(has_cluster, f"Envoy to get {cluster} over ADS", timeout=15)
        body = wait_status(
            kube,
            ns,
            "orders",
            "Ready after the sidecar's ACK",
            lambda b: condition(b, "Ready") == ("True", "Serving"),
            WITHIN,
        )
        node = operator.cache.node("sidecar~orders~0")
        assert node.acked_snapshot is not None
        assert body["status"]["ackedVersion"] == node.acked_snapshot
        await _debug_endpoints_show_the_sidecar(operator, ns, node.acked_snapshot)

        kube.apply([slice_of("payments-v1", ("127.0.0.1", True, False), port=port)], namespace=ns)

        async def healthy() -> bool:
            return await flags(envoy, cluster, host) == "healthy"

        await poll(healthy, f"{host} healthy in Envoy")

        kube.apply([slice_of("payments-v1", ("127.0.0.1", False, True), port=port)], namespace=ns)

        async def drained() -> bool:
            return "/failed_eds_health" in (await flags(envoy, cluster, host) or "")

        await poll(drained, f"{host} drained (EDS unhealthy) in Envoy")

        kube.kubectl("delete", "endpointslice", "payments-v1-abcde", "-n", ns)

        async def gone() -> bool:
            return await flags(envoy, cluster, host) is None

        await poll(gone, f"{host} removed from Envoy")


async def _debug_endpoints_show_the_sidecar(operator: Operator, ns: str, acked: str) -> None:
    """The operator serves the xDS host's /status and /debug/* (as local mode does): the
    sidecar's ACK, and the snapshot it ACKed."""
    base = f"http://127.0.0.1:{operator.metrics_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/status") as response:
            status = await response.json()
        async with http.get(f"{base}/debug/nodes") as response:
            nodes = (await response.json())["nodes"]
        node_id = "sidecar~orders~0"
        async with http.get(f"{base}/debug/snapshot", params={"node": node_id}) as response:
            snapshot = await response.json()
    (orders,) = [s for s in status["services"] if (s["namespace"], s["name"]) == (ns, "orders")]
    assert orders["endpoints"] == {"total": 1, "ready": 1}
    (node,) = [n for n in nodes if n["id"] == node_id]
    assert node["acked_version"] == node["snapshot_version"] == acked == snapshot["version"]
    clusters = snapshot["resources"]["type.googleapis.com/envoy.config.cluster.v3.Cluster"]
    assert "payments|v1" in {c["name"] for c in clusters["resources"]}
