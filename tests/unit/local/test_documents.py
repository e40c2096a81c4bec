"""The run-state documents: endpoints.json (the control plane reads it), state.json (the CLI
reads it) and the ``grpcmesh status --json`` contract."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from grpcmesh_control.local.plan import Plan
from grpcmesh_control.local.sources.files import parse_endpoints
from grpcmesh_control.local.state import (
    DeclaredVersion,
    Reconciled,
    RunState,
    StateError,
    endpoints_document,
    run_state,
)
from grpcmesh_control.local.status import status_document

CONTRACT_TOP = {"ingress", "control_plane", "services"}
CONTRACT_ENDPOINT = {"address", "metrics", "sidecar_admin", "acked_version", "nack_error"}


def test_endpoints_document_is_what_the_control_plane_parses(plan: Plan) -> None:
    ready = {"payments/v2-0": True}
    doc = endpoints_document(plan, ready)
    endpoints = parse_endpoints(json.dumps(doc).encode())
    payments = {(e.version, e.port, e.ready) for e in endpoints["payments"]}
    v1, v2 = plan.replica("payments/v1-0"), plan.replica("payments/v2-0")
    assert payments == {("v1", v1.inbound_port, False), ("v2", v2.inbound_port, True)}
    assert {e.address for eps in endpoints.values() for e in eps} == {"127.0.0.1"}
    assert sum(len(eps) for eps in endpoints.values()) == len(plan.replicas)


def _state(plan: Plan) -> RunState:
    pids = {r.app.name: 1000 + i for i, r in enumerate(plan.replicas)}
    pids[plan.control_plane.process.name] = 99
    return run_state(
        plan,
        launcher_pid=42,
        pids=pids,
        ready={"orders/v1-0": True},
        control_plane_restarts=1,
    )


def test_state_round_trips_through_json(plan: Plan) -> None:
    state = _state(plan)
    assert RunState.from_json(json.loads(json.dumps(state.to_json()))) == state
    orders = next(r for r in state.replicas if r.replica == "v1-0" and r.service == "orders")
    plan_orders = plan.replica("orders/v1-0")
    assert orders.ready
    assert orders.sidecar_inbound == f"127.0.0.1:{plan_orders.inbound_port}"
    assert orders.app == plan_orders.app_address
    assert orders.sidecar_pid is None  # not running
    assert state.control_plane_pid == 99
    assert state.services == ("catalog", "inventory", "orders", "payments")


@pytest.mark.parametrize("doc", [{}, {"format": 99}, {"format": 1, "run_dir": "x"}, []])
def test_foreign_state_documents_are_refused(doc: Any) -> None:
    with pytest.raises(StateError):
        RunState.from_json(doc)


CERTIFICATE = {
    "not_after": "2026-12-06T04:00:00.000+00:00",
    "issued_at": "2026-12-05T04:00:00.000+00:00",
    "serial": "1f",
}


def _control_plane_status(plan: Plan) -> dict[str, Any]:
    r = plan.replica("payments/v2-0")
    return {
        "version": "cfg1",
        "services": [],
        "problems": ["something"],
        "nodes": [
            {
                "id": r.node_id,
                "connected": True,
                "connected_since": 1.0,
                "acked_version": "aaa",
                "snapshot_version": "bbb",
                "nack": {"type_url": "t", "version": "bbb", "message": "bad listener"},
                "identity": "spiffe://cluster.local/ns/default/sa/payments",
                "certificate": CERTIFICATE,
            },
            {
                "id": plan.ingress.node_id,
                "connected": True,
                "connected_since": 1.0,
                "acked_version": "ccc",
                "snapshot_version": "ccc",
                "nack": None,
            },
        ],
    }


def test_status_merges_the_launchers_state_with_the_control_planes(plan: Plan) -> None:
    doc = status_document(_state(plan), _control_plane_status(plan))
    assert set(doc) >= CONTRACT_TOP
    assert doc["ingress"] == plan.ingress.address
    assert doc["control_plane"] == plan.control_plane.admin_address
    assert [s["name"] for s in doc["services"]] == ["catalog", "inventory", "orders", "payments"]
    for service in doc["services"]:
        for endpoint in service["endpoints"]:
            assert set(endpoint) >= CONTRACT_ENDPOINT
    payments = next(s for s in doc["services"] if s["name"] == "payments")["endpoints"]
    v2 = next(e for e in payments if e["replica"] == "v2-0")
    plan_v2 = plan.replica("payments/v2-0")
    assert v2["address"] == plan_v2.app_address
    assert v2["metrics"] == plan_v2.metrics_address
    assert v2["sidecar_admin"] == plan_v2.admin_address
    assert (v2["acked_version"], v2["snapshot_version"], v2["nack_error"]) == (
        "aaa",
        "bbb",
        "bad listener",
    )
    # Each endpoint's identity and certificate expiry, as the control plane holds them.
    assert v2["identity"] == "spiffe://cluster.local/ns/default/sa/payments"
    assert v2["certificate"] == CERTIFICATE
    v1 = next(e for e in payments if e["replica"] == "v1-0")
    assert (v1["acked_version"], v1["nack_error"], v1["connected"]) == (None, None, False)
    assert (v1["identity"], v1["certificate"]) == (None, None)
    assert doc["gateway"]["acked_version"] == "ccc"
    assert doc["config_version"] == "cfg1"
    # The control plane's, then every declared service that would take calls but cannot.
    assert doc["problems"] == [
        "something",
        "MeshService default/catalog: no ready endpoint: calls to it fail",
        "MeshService default/inventory: no ready endpoint: calls to it fail",
        "MeshService default/payments: no ready endpoint: calls to it fail",
    ]
    json.dumps(doc)  # plain JSON types only


def test_status_lists_every_declared_version_and_what_lacks_endpoints(plan: Plan) -> None:
    ready = {r.key: True for r in plan.replicas if r.key != "payments/v2-0"}
    state = run_state(
        plan,
        launcher_pid=42,
        pids={},
        ready=ready,
        restarts={plan.replica("orders/v1-0").app.name: 2, plan.ingress.process.name: 1},
    )
    # A declared service nothing runs yet (applied, not started): listed, and a problem.
    state = dataclasses.replace(
        state,
        declared=(
            *state.declared,
            DeclaredVersion("reviews", "default", "v1", weight=100, replicas=1),
        ),
    )
    doc = status_document(state, None)
    services = {s["name"]: s for s in doc["services"]}
    assert list(services) == ["catalog", "inventory", "orders", "payments", "reviews"]
    assert services["reviews"]["endpoints"] == []
    assert services["payments"]["versions"] == [
        {"name": "v1", "weight": 90, "replicas": 1, "ready": 1},
        {"name": "v2", "weight": 10, "replicas": 1, "ready": 0},
    ]
    assert doc["problems"] == [
        "MeshService default/payments: version v2 (weight 10) has no ready endpoint: "
        "its share goes to the other versions",
        "MeshService default/reviews: no ready endpoint: calls to it fail",
    ]
    orders = services["orders"]["endpoints"][0]
    assert orders["restarts"] == {"app": 2, "sidecar": 0}
    assert doc["gateway"]["restarts"] == 1


def test_reconciled_changes_round_trip_through_state_json(plan: Plan) -> None:
    done = Reconciled("abc", started=("reviews/v1-0",), stopped=("payments/v2-0",))
    state = run_state(plan, launcher_pid=1, pids={}, ready={}, reconciled=done)
    assert RunState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert status_document(state, None)["reconciled"]["started"] == ["reviews/v1-0"]


def test_status_without_a_control_plane_keeps_the_launchers_view(plan: Plan) -> None:
    doc = status_document(_state(plan), None)
    assert doc["control_plane_reachable"] is False
    assert doc["config_version"] is None
    endpoints = [e for s in doc["services"] for e in s["endpoints"]]
    assert len(endpoints) == len(plan.replicas)
    assert all(e["acked_version"] is None and e["nack_error"] is None for e in endpoints)


def test_state_and_status_carry_prometheus_when_it_runs(plan: Plan) -> None:
    state = _state(plan)
    assert state.prometheus is None and status_document(state, None)["prometheus"] is None
    doc = state.to_json()
    # A state document written without the Prometheus fields still reads.
    for key in ("prometheus", "prometheus_pid", "prometheus_log"):
        del doc[key]
    assert RunState.from_json(doc) == state
    running = dataclasses.replace(state, prometheus="127.0.0.1:9090", prometheus_pid=7)
    assert RunState.from_json(running.to_json()) == running
    assert status_document(running, None)["prometheus"] == "127.0.0.1:9090"
