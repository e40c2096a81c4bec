"""Traffic only to versions with a ready endpoint (``local.rollout``)."""

from __future__ import annotations

from envoy.config.core.v3 import health_check_pb2

from grpcmesh_control.local.rollout import route_to_ready
from grpcmesh_control.mesh.model import Endpoint, MeshService
from grpcmesh_control.mesh.translate.clusters import version_assignment


def _payments(examples: tuple[MeshService, ...]) -> MeshService:
    return next(s for s in examples if s.name == "payments")


def _weights(svc: MeshService) -> dict[str, int]:
    return {v.name: v.weight for v in svc.versions}


def _endpoints(**ready: bool) -> dict[str, tuple[Endpoint, ...]]:
    return {
        "payments": tuple(
            Endpoint("127.0.0.1", 20000 + i, version, ready=ok)
            for i, (version, ok) in enumerate(ready.items())
        )
    }


def test_a_version_without_a_ready_endpoint_gets_no_share(
    examples: tuple[MeshService, ...],
) -> None:
    (gated,) = route_to_ready([_payments(examples)], _endpoints(v1=True, v2=False))
    assert _weights(gated) == {"v1": 90, "v2": 0}
    # The rest of the service is untouched: its clusters stay, so the way back is a route.
    assert gated.traffic_policy == _payments(examples).traffic_policy


def test_ready_versions_keep_the_declared_weights(examples: tuple[MeshService, ...]) -> None:
    svc = _payments(examples)
    assert route_to_ready([svc], _endpoints(v1=True, v2=True)) == (svc,)


def test_with_nothing_ready_anywhere_the_declared_weights_stay(
    examples: tuple[MeshService, ...],
) -> None:
    svc = _payments(examples)
    assert route_to_ready([svc], _endpoints(v1=False, v2=False)) == (svc,)
    assert route_to_ready([svc], {}) == (svc,)  # a service applied, not started yet


def test_a_gated_version_still_fails_over_for_calls_already_routed_to_it(
    examples: tuple[MeshService, ...],
) -> None:
    """The gate changes the route (RDS), but Envoy applies the endpoints (EDS) first, and calls
    routed before, or retried after a try the dead canary's sidecar did not deliver, still pick
    hosts in the canary's cluster. So that cluster must keep the other versions as failover.
    Before, a zero weight dropped them: "no healthy upstream" for each such call (issue 15, the
    canary race: 6 of 10 kills under 60 charges/s with the canary at weight 50)."""
    endpoints = _endpoints(v1=True, v2=False)
    (gated,) = route_to_ready([_payments(examples)], endpoints)
    v2 = next(v for v in gated.versions if v.name == "v2")
    assignment = version_assignment(gated, v2, {"v1": endpoints["payments"][:1]})
    healthy_by_priority = {
        group.priority: [
            e.endpoint.address.socket_address.port_value
            for e in group.lb_endpoints
            if e.health_status == health_check_pb2.HealthStatus.HEALTHY
        ]
        for group in assignment.endpoints
    }
    assert healthy_by_priority == {0: [], 1: [20000]}
