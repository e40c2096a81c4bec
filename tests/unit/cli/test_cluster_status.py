"""The cluster status document (pure): pods joined to their sidecar's xDS node by name, the
gateway's proxies, and every problem a user must see."""

from __future__ import annotations

from typing import Any

from grpcmesh_control.cli.cluster_status import ClusterTarget, Snapshot, cluster_status_document

TARGET = ClusterTarget(None, "shop", "grpcmesh-system", "grpcmesh-control")


def meshservice(name: str, ready: str = "True", degraded: str = "False") -> dict[str, Any]:
    reason = "AsExpected" if ready == "True" else "Waiting"
    return {
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"grpc": {"port": 50051}, "versions": [{"name": "v1", "weight": 100}]},
        "status": {
            "ackedVersion": "abc",
            "conditions": [
                {"type": "Ready", "status": ready, "reason": reason},
                {"type": "Degraded", "status": degraded, "reason": "ConfigRejected"},
            ],
        },
    }


def pod(name: str, service: str, ip: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"grpcmesh.io/service": service, "grpcmesh.io/version": "v1"},
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def node(node_id: str, acked: str | None, nack: str | None = None) -> dict[str, Any]:
    return {
        "id": node_id,
        "connected": True,
        "acked_version": acked,
        "snapshot_version": "v9",
        "nack": None if nack is None else {"message": nack},
    }


OPERATOR = {
    "version": "v9",
    "problems": [],
    "nodes": [
        {
            **node("sidecar~catalog~catalog-0", "v9"),
            "identity": "spiffe://cluster.local/ns/shop/sa/catalog",
            "certificate": {"not_after": "2026-12-06T04:00:00.000+00:00"},
        },
        node("sidecar~catalog~catalog-1", "v8", nack="bad route"),
        node("ingress~gateway~gateway-0", "v9"),
    ],
}


def test_each_pod_is_an_endpoint_with_its_own_sidecars_state() -> None:
    snap = Snapshot(
        context="prod",
        meshservices=[meshservice("catalog")],
        pods=[
            pod("catalog-1", "catalog", "10.0.0.2", ready=False),
            pod("catalog-0", "catalog", "10.0.0.1"),
            pod("orders-0", "orders", "10.0.0.3"),
        ],
        operator=OPERATOR,
        operator_error=None,
    )
    doc = cluster_status_document(TARGET, snap)
    [catalog] = doc["services"]
    assert [(e["replica"], e["address"], e["ready"]) for e in catalog["endpoints"]] == [
        ("catalog-0", "10.0.0.1:50051", True),
        ("catalog-1", "10.0.0.2:50051", False),
    ]
    first, second = catalog["endpoints"]
    assert (first["acked_version"], first["nack_error"]) == ("v9", None)
    assert (second["acked_version"], second["nack_error"]) == ("v8", "bad route")
    # The identity and certificate the operator's /status names (none without a mesh CA).
    assert first["identity"] == "spiffe://cluster.local/ns/shop/sa/catalog"
    assert first["certificate"] == {"not_after": "2026-12-06T04:00:00.000+00:00"}
    assert (second["identity"], second["certificate"]) == (None, None)
    assert [g["node_id"] for g in doc["gateways"]] == ["ingress~gateway~gateway-0"]
    assert doc["context"] == "prod"
    assert doc["config_version"] == "v9"
    assert doc["problems"] == []


def test_an_unreachable_operator_and_unready_services_are_problems() -> None:
    snap = Snapshot(
        context="prod",
        meshservices=[meshservice("catalog", ready="False", degraded="True")],
        pods=[],
        operator=None,
        operator_error="503 Service Unavailable: no endpoints available",
    )
    doc = cluster_status_document(TARGET, snap)
    assert doc["control_plane_reachable"] is False
    assert doc["problems"] == [
        "operator status unavailable: 503 Service Unavailable: no endpoints available",
        "shop/catalog not Ready (Waiting)",
        "shop/catalog Degraded (ConfigRejected)",
        "shop/catalog has no pods",
    ]
