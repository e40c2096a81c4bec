"""A MeshService's ``status``, computed from what the operator observed (pure; the clock is an
argument).

Conditions (Kubernetes conventions: ``True``/``False``, a CamelCase ``reason`` from the enums
below, ``lastTransitionTime`` kept while ``status`` stays the same):

- ``Registered``: the mesh registry holds the service (its spec parses and its name is free).
- ``Ready``: callers can use it: objects applied, workloads rolled out, ready endpoints, and
  every connected sidecar acknowledged the config it is served. The first unmet step is the
  reason.
- ``Degraded``: something needs a human even if traffic flows (an invalid spec, a failed apply,
  a rejected config, a gRPC service served twice, a backend that does not exist). ``False``
  with reason ``AsExpected`` otherwise.

``ackedVersion`` is the version every sidecar of the service has acknowledged; while they
disagree (a push is rolling out) the previous value stays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from grpcmesh_control.mesh.translate.registry import Problem

__all__ = [
    "ApplyFailure",
    "ConditionStatus",
    "ConditionType",
    "EndpointCount",
    "Observation",
    "Reason",
    "SidecarAck",
    "WorkloadRollout",
    "compute_status",
]

_MESSAGE_MAX = 32768  # the CRD's maxLength for a condition message


class ConditionType(StrEnum):
    READY = "Ready"
    REGISTERED = "Registered"
    DEGRADED = "Degraded"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    # Registered
    REGISTERED = "Registered"
    INVALID_SPEC = "InvalidSpec"
    NAME_CONFLICT = "NameConflict"
    # Ready
    SERVING = "Serving"
    NOT_REGISTERED = "NotRegistered"
    APPLY_FAILED = "ApplyFailed"
    PROGRESSING = "Progressing"
    CONFIG_REJECTED = "ConfigRejected"
    NO_READY_ENDPOINTS = "NoReadyEndpoints"
    AWAITING_ACK = "AwaitingAck"
    # Degraded
    AS_EXPECTED = "AsExpected"
    GRPC_SERVICE_CONFLICT = "GrpcServiceConflict"
    UNRESOLVED_BACKENDS = "UnresolvedBackends"
    REGISTRY_PROBLEM = "RegistryProblem"


# Degraded's reason when several apply: the first of these present.
_SEVERITY = (
    Reason.NAME_CONFLICT,
    Reason.APPLY_FAILED,
    Reason.CONFIG_REJECTED,
    Reason.GRPC_SERVICE_CONFLICT,
    Reason.UNRESOLVED_BACKENDS,
    Reason.REGISTRY_PROBLEM,
)


@dataclass(frozen=True)
class ApplyFailure:
    """An object the operator could not write, e.g. ``Deployment/orders-v1`` and the API's
    message."""

    object: str
    message: str


@dataclass(frozen=True)
class WorkloadRollout:
    """One owned Deployment, from its ``status``."""

    name: str
    desired: int
    updated: int = 0
    available: int = 0
    current: bool = True
    """The Deployment's ``status.observedGeneration`` has caught up with its generation."""

    @property
    def complete(self) -> bool:
        return self.current and self.updated >= self.desired and self.available >= self.desired


@dataclass(frozen=True)
class EndpointCount:
    ready: int = 0
    total: int = 0


@dataclass(frozen=True)
class SidecarAck:
    """One connected sidecar: the version it is served, the last it ACKed and NACKed."""

    node: str
    served: str
    acked: str | None = None
    rejected: str | None = None
    error: str | None = None

    @property
    def programmed(self) -> bool:
        return self.acked == self.served

    @property
    def rejects_served(self) -> bool:
        return self.rejected is not None and self.rejected == self.served


@dataclass(frozen=True)
class Observation:
    """Everything the status depends on, gathered by the edge for one MeshService."""

    generation: int | None
    spec_error: str | None = None
    """``InvalidResource`` message when the spec does not parse; the rest is then moot."""
    missing: tuple[str, ...] = ()
    """Desired objects not (yet) found, e.g. ``Service/orders``."""
    failures: tuple[ApplyFailure, ...] = ()
    workloads: tuple[WorkloadRollout, ...] = ()
    problems: tuple[Problem, ...] = ()
    """The registry's problems with this service (``Registry.problems_of``)."""
    endpoints: EndpointCount = EndpointCount()
    sidecars: tuple[SidecarAck, ...] | None = ()
    """Connected sidecars; ``None`` when the provider serves no xDS (appmesh)."""


@dataclass(frozen=True)
class _Condition:
    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str


def compute_status(
    observed: Observation, previous: Mapping[str, Any] | None, *, now: datetime
) -> dict[str, Any]:
    """The full ``status`` to write. ``previous`` is the current status (or None), for
    transition times and the last agreed ``ackedVersion``; ``now`` is timezone-aware."""
    previous = previous or {}
    conditions = [_ready(observed), _registered(observed), _degraded(observed)]
    status: dict[str, Any] = {
        "conditions": _with_times(conditions, previous.get("conditions"), observed, now),
        "endpoints": {"ready": observed.endpoints.ready, "total": observed.endpoints.total},
    }
    acked = _acked_version(observed.sidecars, previous.get("ackedVersion"))
    if acked is not None:
        status["ackedVersion"] = acked
    if observed.generation is not None:
        status["observedGeneration"] = observed.generation
    return dict(sorted(status.items()))


def _name_conflicts(observed: Observation) -> list[Problem]:
    return [p for p in observed.problems if p.field == "metadata.name"]


def _registered(observed: Observation) -> _Condition:
    kind = ConditionType.REGISTERED
    if observed.spec_error is not None:
        return _false(kind, Reason.INVALID_SPEC, observed.spec_error)
    conflicts = _name_conflicts(observed)
    if conflicts:
        return _false(kind, Reason.NAME_CONFLICT, _join(conflicts))
    return _Condition(kind, ConditionStatus.TRUE, Reason.REGISTERED, "in the mesh registry")


def _ready(observed: Observation) -> _Condition:
    kind = ConditionType.READY
    if observed.spec_error is not None:
        return _false(kind, Reason.INVALID_SPEC, observed.spec_error)
    if _name_conflicts(observed):
        return _false(kind, Reason.NOT_REGISTERED, _join(_name_conflicts(observed)))
    if observed.failures:
        return _false(kind, Reason.APPLY_FAILED, _join(_failures(observed)))
    if observed.missing:
        return _false(kind, Reason.PROGRESSING, "waiting for " + ", ".join(observed.missing))
    rolling = [w for w in observed.workloads if not w.complete]
    if rolling:
        detail = ", ".join(
            f"Deployment/{w.name} {w.available}/{w.desired} available" for w in rolling
        )
        return _false(kind, Reason.PROGRESSING, detail)
    rejected = [s for s in observed.sidecars or () if s.rejects_served]
    if rejected:
        return _false(kind, Reason.CONFIG_REJECTED, _join(_rejections(rejected)))
    if observed.endpoints.ready == 0:
        detail = f"0 of {observed.endpoints.total} endpoints ready"
        return _false(kind, Reason.NO_READY_ENDPOINTS, detail)
    if observed.sidecars is not None:
        waiting = [s for s in observed.sidecars if not s.programmed]
        if not observed.sidecars:
            return _false(kind, Reason.AWAITING_ACK, "no sidecar connected to the control plane")
        if waiting:
            detail = f"{len(waiting)} of {len(observed.sidecars)} sidecars have not ACKed " + (
                ", ".join(f"{s.node} ({s.served})" for s in waiting[:5])
            )
            return _false(kind, Reason.AWAITING_ACK, detail)
    detail = f"{observed.endpoints.ready} endpoints ready"
    return _Condition(kind, ConditionStatus.TRUE, Reason.SERVING, detail)


def _degraded(observed: Observation) -> _Condition:
    kind = ConditionType.DEGRADED
    if observed.spec_error is not None:
        return _true(kind, Reason.INVALID_SPEC, observed.spec_error)
    # One reason (the most severe present); the message lists every problem.
    found: list[tuple[Reason, str]] = []
    found += [(Reason.NAME_CONFLICT, str(p)) for p in _name_conflicts(observed)]
    found += [(Reason.APPLY_FAILED, m) for m in _failures(observed)]
    rejected = [s for s in observed.sidecars or () if s.rejected is not None]
    found += [(Reason.CONFIG_REJECTED, m) for m in _rejections(rejected)]
    for problem in observed.problems:
        if problem.field == "metadata.name":
            continue
        if problem.field.startswith("spec.grpc.services"):
            found.append((Reason.GRPC_SERVICE_CONFLICT, str(problem)))
        elif problem.field.startswith("spec.backends"):
            found.append((Reason.UNRESOLVED_BACKENDS, str(problem)))
        else:
            found.append((Reason.REGISTRY_PROBLEM, str(problem)))
    if not found:
        return _false(kind, Reason.AS_EXPECTED, "no problems")
    found.sort(key=lambda item: _SEVERITY.index(item[0]))  # stable: same reason keeps order
    return _true(kind, found[0][0], "; ".join(message for _, message in found))


def _failures(observed: Observation) -> list[str]:
    return [f"{f.object}: {f.message}" for f in observed.failures]


def _rejections(sidecars: Iterable[SidecarAck]) -> list[str]:
    return [f"{s.node} rejected {s.rejected}: {s.error or 'no detail'}" for s in sidecars]


def _acked_version(sidecars: tuple[SidecarAck, ...] | None, previous: object) -> str | None:
    versions = {s.acked for s in sidecars or ()}
    if len(versions) == 1:
        (agreed,) = versions
        if agreed is not None:
            return agreed
    return previous if isinstance(previous, str) else None


def _join(items: Iterable[object]) -> str:
    return "; ".join(str(i) for i in items)


def _false(kind: ConditionType, reason: Reason, message: str) -> _Condition:
    return _Condition(kind, ConditionStatus.FALSE, reason, message)


def _true(kind: ConditionType, reason: Reason, message: str) -> _Condition:
    return _Condition(kind, ConditionStatus.TRUE, reason, message)


def _with_times(
    conditions: list[_Condition],
    previous: object,
    observed: Observation,
    now: datetime,
) -> list[dict[str, Any]]:
    before: dict[str, Mapping[str, Any]] = {}
    if isinstance(previous, list):
        before = {c["type"]: c for c in previous if isinstance(c, Mapping) and "type" in c}
    stamp = _rfc3339(now)
    out = []
    for condition in conditions:
        old = before.get(condition.type.value)
        kept = old is not None and old.get("status") == condition.status.value
        changed_at = old.get("lastTransitionTime") if kept and old is not None else None
        entry: dict[str, Any] = {
            "lastTransitionTime": changed_at if isinstance(changed_at, str) else stamp,
            "message": _truncate(condition.message),
            "reason": condition.reason.value,
            "status": condition.status.value,
            "type": condition.type.value,
        }
        if observed.generation is not None:
            entry["observedGeneration"] = observed.generation
        out.append(entry)
    return out


def _rfc3339(moment: datetime) -> str:
    # metav1.Time: second precision, UTC, "Z".
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _truncate(message: str) -> str:
    if len(message) <= _MESSAGE_MAX:
        return message
    return message[: _MESSAGE_MAX - 3] + "..."
