"""Traffic only to versions with a ready endpoint (``local.rollout``)."""

from __future__ import annotations

from grpcmesh_control.local.rollout import route_to_ready
from grpcmesh_control.mesh.model import Endpoint, MeshService


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
