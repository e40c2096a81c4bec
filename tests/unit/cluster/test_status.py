"""compute_status: conditions and their reasons, transition times, ackedVersion."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jsonschema import Draft4Validator

from grpcmesh_control.cluster.objects import (
    ApplyFailure,
    ConditionStatus,
    ConditionType,
    EndpointCount,
    Observation,
    Reason,
    SidecarAck,
    WorkloadRollout,
    compute_status,
)
from grpcmesh_control.mesh.model.schema import load_crd, openapi_schema, strict_schema
from grpcmesh_control.mesh.translate import Problem

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
KEY = "default/orders"

HEALTHY = Observation(
    generation=4,
    workloads=(WorkloadRollout("orders-v1", desired=2, updated=2, available=2),),
    endpoints=EndpointCount(ready=2, total=2),
    sidecars=(
        SidecarAck("sidecar~orders~a", served="v7", acked="v7"),
        SidecarAck("sidecar~orders~b", served="v7", acked="v7"),
    ),
)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def condition(status: dict[str, Any], kind: ConditionType) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == kind.value)
    return found


def test_healthy() -> None:
    status = compute_status(HEALTHY, None, now=T0)
    assert conditions(status) == {
        "Ready": ("True", "Serving"),
        "Registered": ("True", "Registered"),
        "Degraded": ("False", "AsExpected"),
    }
    assert status["observedGeneration"] == 4
    assert status["endpoints"] == {"ready": 2, "total": 2}
    assert status["ackedVersion"] == "v7"
    for entry in status["conditions"]:
        assert entry["lastTransitionTime"] == "2026-11-27T12:00:00Z"
        assert entry["observedGeneration"] == 4


def test_status_fits_the_crd() -> None:
    schema = strict_schema(openapi_schema(load_crd()))["properties"]["status"]
    validator = Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
    for observed in (HEALTHY, Observation(generation=None, spec_error="x: bad")):
        assert list(validator.iter_errors(compute_status(observed, None, now=T0))) == []


@pytest.mark.parametrize(
    ("change", "ready", "degraded"),
    [
        ({"spec_error": "spec.replicas: 'two' is not of type 'integer'"},
         Reason.INVALID_SPEC, Reason.INVALID_SPEC),
        ({"problems": (Problem(KEY, "metadata.name", "name already used by staging/orders"),)},
         Reason.NOT_REGISTERED, Reason.NAME_CONFLICT),
        ({"failures": (ApplyFailure("Deployment/orders-v1", "forbidden"),)},
         Reason.APPLY_FAILED, Reason.APPLY_FAILED),
        ({"missing": ("Service/orders",)}, Reason.PROGRESSING, Reason.AS_EXPECTED),
        ({"workloads": (WorkloadRollout("orders-v1", desired=2, updated=1, available=1),)},
         Reason.PROGRESSING, Reason.AS_EXPECTED),
        ({"workloads": (WorkloadRollout("orders-v1", desired=2, updated=2, available=2,
                                        current=False),)},
         Reason.PROGRESSING, Reason.AS_EXPECTED),
        ({"sidecars": (SidecarAck("sidecar~orders~a", served="v8", acked="v7", rejected="v8",
                                  error="unknown cluster"),)},
         Reason.CONFIG_REJECTED, Reason.CONFIG_REJECTED),
        ({"endpoints": EndpointCount(ready=0, total=2)}, Reason.NO_READY_ENDPOINTS,
         Reason.AS_EXPECTED),
        ({"sidecars": (SidecarAck("sidecar~orders~a", served="v8", acked="v7"),)},
         Reason.AWAITING_ACK, Reason.AS_EXPECTED),
        ({"sidecars": ()}, Reason.AWAITING_ACK, Reason.AS_EXPECTED),
        ({"problems": (Problem(KEY, "spec.backends[0].name", "no MeshService shipping"),)},
         Reason.SERVING, Reason.UNRESOLVED_BACKENDS),
        ({"problems": (Problem(KEY, "spec.grpc.services", "already served by default/x"),)},
         Reason.SERVING, Reason.GRPC_SERVICE_CONFLICT),
    ],
)  # fmt: skip
def test_reasons(change: dict[str, Any], ready: Reason, degraded: Reason) -> None:
    observed = replace(HEALTHY, **change)
    status = compute_status(observed, None, now=T0)
    got = conditions(status)
    assert got["Ready"] == (
        "True" if ready is Reason.SERVING else "False",
        ready.value,
    )
    assert got["Degraded"] == (
        "False" if degraded is Reason.AS_EXPECTED else "True",
        degraded.value,
    )


def test_messages_carry_the_detail() -> None:
    observed = replace(
        HEALTHY,
        problems=(
            Problem(KEY, "spec.backends[0].name", "no MeshService shipping"),
            Problem(KEY, "spec.grpc.services", "x is already served by default/y"),
        ),
    )
    degraded = condition(compute_status(observed, None, now=T0), ConditionType.DEGRADED)
    # The most severe reason; every problem in the message.
    assert degraded["reason"] == Reason.GRPC_SERVICE_CONFLICT
    assert "no MeshService shipping" in degraded["message"]
    assert "already served" in degraded["message"]


def test_registered_survives_operational_trouble() -> None:
    observed = replace(HEALTHY, endpoints=EndpointCount())
    assert conditions(compute_status(observed, None, now=T0))["Registered"] == (
        "True",
        "Registered",
    )


def test_appmesh_has_no_acks_to_wait_for() -> None:
    observed = replace(HEALTHY, sidecars=None)
    status = compute_status(observed, None, now=T0)
    assert conditions(status)["Ready"] == ("True", "Serving")
    assert "ackedVersion" not in status


def test_transition_time_kept_while_status_unchanged() -> None:
    first = compute_status(HEALTHY, None, now=T0)
    # Nothing changed: nothing moves (the operator can skip the write).
    again = compute_status(HEALTHY, first, now=T1)
    assert again == first
    # Ready flips: only Ready's time moves.
    broken = replace(HEALTHY, endpoints=EndpointCount(ready=0, total=2))
    flipped = compute_status(broken, first, now=T1)
    assert condition(flipped, ConditionType.READY)["lastTransitionTime"] == "2026-11-27T12:05:00Z"
    assert condition(flipped, ConditionType.REGISTERED)["lastTransitionTime"] == (
        "2026-11-27T12:00:00Z"
    )
    # A new reason with the same status keeps the time too (Kubernetes convention).
    other = replace(HEALTHY, missing=("Service/orders",))
    later = compute_status(other, flipped, now=T1 + timedelta(minutes=1))
    ready = condition(later, ConditionType.READY)
    assert (ready["status"], ready["reason"]) == (ConditionStatus.FALSE, Reason.PROGRESSING)
    assert ready["lastTransitionTime"] == "2026-11-27T12:05:00Z"


def test_acked_version_holds_while_sidecars_disagree() -> None:
    first = compute_status(HEALTHY, None, now=T0)
    rolling = replace(
        HEALTHY,
        sidecars=(
            SidecarAck("sidecar~orders~a", served="v8", acked="v8"),
            SidecarAck("sidecar~orders~b", served="v8", acked="v7"),
        ),
    )
    during = compute_status(rolling, first, now=T1)
    assert during["ackedVersion"] == "v7"
    assert conditions(during)["Ready"] == ("False", "AwaitingAck")
    done = replace(
        HEALTHY, sidecars=tuple(SidecarAck(f"n{i}", served="v8", acked="v8") for i in range(2))
    )
    assert compute_status(done, during, now=T1)["ackedVersion"] == "v8"


def test_long_messages_are_cut_to_the_crd_limit() -> None:
    observed = Observation(generation=1, spec_error="x" * 40_000)
    for entry in compute_status(observed, None, now=T0)["conditions"]:
        assert len(entry["message"]) <= 32768


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_status(HEALTHY, None, now=datetime(2026, 1, 1))
