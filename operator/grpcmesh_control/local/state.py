"""The run-state documents the launcher writes: ``state.json`` and ``endpoints.json`` (pure).

``state.json`` tells ``grpcmesh status/apply/demo`` (and tests) where everything is;
``endpoints.json`` is local mode's EndpointSlices, read by the control plane. Both are rendered
from the plan plus what only the running launcher knows (pids, readiness, restarts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from grpcmesh_control.local.plan import Plan
from grpcmesh_control.local.sources.files import ENDPOINTS_FILE, RESOURCES_DIR
from grpcmesh_control.mesh.errors import MeshError

__all__ = [
    "ENDPOINTS_FILE",
    "RESOURCES_DIR",
    "STATE_FILE",
    "STATE_FORMAT",
    "DeclaredVersion",
    "Reconciled",
    "ReplicaState",
    "RunState",
    "StateError",
    "endpoints_document",
    "run_state",
]

STATE_FILE = "state.json"
STATE_FORMAT = 1
_KEY_LISTS = ("started", "stopped", "restarted", "reconfigured")


class StateError(MeshError, ValueError):
    """``state.json`` is missing fields or is not ours."""


@dataclass(frozen=True)
class ReplicaState:
    service: str
    version: str
    replica: str
    node_id: str
    app: str
    """The app's gRPC address (host:port)."""
    metrics: str
    sidecar_admin: str
    sidecar_inbound: str
    """Where callers' sidecars reach this replica: its Envoy's inbound listener."""
    sidecar_egress: str
    config_file: str
    app_log: str
    sidecar_log: str
    app_pid: int | None
    sidecar_pid: int | None
    ready: bool
    app_restarts: int = 0
    """Times the launcher restarted the app after it exited (with back-off)."""
    sidecar_restarts: int = 0


@dataclass(frozen=True)
class DeclaredVersion:
    """One version of one MeshService in ``resources/``, whether or not anything runs it."""

    service: str
    namespace: str
    version: str
    weight: int
    replicas: int
    """Replicas declared (0 for a service without a workload: nothing runs it locally)."""


@dataclass(frozen=True)
class Reconciled:
    """What the launcher did to follow the latest change of ``resources/`` (a live apply)."""

    resources_digest: str
    """``sources.resources_digest`` of the files it followed; ``apply`` waits for its own."""
    started: tuple[str, ...] = ()
    """Replica keys (``<svc>/<replica>``) started."""
    stopped: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    """Replicas whose app or sidecar command changed: stopped, then started again."""
    reconfigured: tuple[str, ...] = ()
    """Replicas whose ``config.yaml`` (``spec.config``) was rewritten; the kit reloads it."""
    error: str | None = None
    """Why the change could not be followed (the processes were left as they were)."""


@dataclass(frozen=True)
class RunState:
    run_dir: str
    launcher_pid: int
    ingress: str
    ingress_admin: str
    ingress_node_id: str
    ingress_pid: int | None
    ingress_log: str
    control_plane_xds: str
    control_plane_admin: str
    control_plane_pid: int | None
    control_plane_log: str
    control_plane_restarts: int
    replicas: tuple[ReplicaState, ...]
    # Optional, so state documents without them (no --prometheus) still read.
    prometheus: str | None = None
    """Prometheus' address (host:port) when ``up --prometheus`` runs one."""
    prometheus_pid: int | None = None
    prometheus_log: str | None = None
    ingress_restarts: int = 0
    declared: tuple[DeclaredVersion, ...] = ()
    reconciled: Reconciled | None = None
    serving: bool = False
    """The mesh has started: every replica ready, and every proxy ACKed config holding their
    endpoints (``up`` says "mesh ready" then). Set once; later readiness is per replica."""

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["format"] = STATE_FORMAT
        return doc

    @classmethod
    def from_json(cls, doc: object) -> RunState:
        if not isinstance(doc, Mapping) or doc.get("format") != STATE_FORMAT:
            raise StateError(f"not a grpcmesh state document (format {STATE_FORMAT})")
        try:
            nested = ("format", "replicas", "declared", "reconciled")
            fields = {k: v for k, v in doc.items() if k not in nested}
            replicas = tuple(ReplicaState(**r) for r in doc["replicas"])
            declared = tuple(DeclaredVersion(**d) for d in doc.get("declared", ()))
            found = doc.get("reconciled")
            reconciled = None
            if isinstance(found, Mapping):
                reconciled = Reconciled(
                    resources_digest=str(found["resources_digest"]),
                    **{k: tuple(found.get(k, ())) for k in _KEY_LISTS},
                    error=found.get("error"),
                )
            return cls(**fields, replicas=replicas, declared=declared, reconciled=reconciled)
        except (KeyError, TypeError) as exc:
            raise StateError(f"state document: {exc}") from None

    @property
    def services(self) -> tuple[str, ...]:
        """Every declared service, and any still running (being stopped)."""
        names = {r.service for r in self.replicas} | {d.service for d in self.declared}
        return tuple(sorted(names))


def run_state(
    plan: Plan,
    *,
    launcher_pid: int,
    pids: Mapping[str, int | None],
    ready: Mapping[str, bool],
    control_plane_restarts: int = 0,
    restarts: Mapping[str, int] | None = None,
    reconciled: Reconciled | None = None,
    serving: bool = False,
) -> RunState:
    """``pids`` and ``restarts`` are keyed by ``ProcessSpec.name``, ``ready`` by
    ``ReplicaPlan.key``."""
    restarts = restarts or {}
    return RunState(
        run_dir=str(plan.run_dir),
        launcher_pid=launcher_pid,
        ingress=plan.ingress.address,
        ingress_admin=plan.ingress.admin_address,
        ingress_node_id=plan.ingress.node_id,
        ingress_pid=pids.get(plan.ingress.process.name),
        ingress_log=str(plan.ingress.process.log),
        control_plane_xds=plan.control_plane.xds_address,
        control_plane_admin=plan.control_plane.admin_address,
        control_plane_pid=pids.get(plan.control_plane.process.name),
        control_plane_log=str(plan.control_plane.process.log),
        control_plane_restarts=control_plane_restarts,
        prometheus=None if plan.prometheus is None else plan.prometheus.address,
        prometheus_pid=None if plan.prometheus is None else pids.get(plan.prometheus.process.name),
        prometheus_log=None if plan.prometheus is None else str(plan.prometheus.process.log),
        ingress_restarts=restarts.get(plan.ingress.process.name, 0),
        declared=tuple(
            DeclaredVersion(
                service=svc.name,
                namespace=svc.namespace,
                version=v.name,
                weight=v.weight,
                replicas=0
                if svc.workload is None
                else (svc.replicas if v.replicas is None else v.replicas),
            )
            for svc in plan.services
            for v in svc.versions
        ),
        reconciled=reconciled,
        serving=serving,
        replicas=tuple(
            ReplicaState(
                service=r.service,
                version=r.version,
                replica=r.replica,
                node_id=r.node_id,
                app=r.app_address,
                metrics=r.metrics_address,
                sidecar_admin=r.admin_address,
                sidecar_inbound=f"{_host(r.app_address)}:{r.inbound_port}",
                sidecar_egress=f"{_host(r.app_address)}:{r.egress_port}",
                config_file=str(r.config_path),
                app_log=str(r.app.log),
                sidecar_log=str(r.sidecar.log),
                app_pid=pids.get(r.app.name),
                sidecar_pid=pids.get(r.sidecar.name),
                ready=ready.get(r.key, False),
                app_restarts=restarts.get(r.app.name, 0),
                sidecar_restarts=restarts.get(r.sidecar.name, 0),
            )
            for r in plan.replicas
        ),
    )


def endpoints_document(plan: Plan, ready: Mapping[str, bool]) -> dict[str, Any]:
    """Every replica's sidecar inbound address, ready or not (not-ready ones are sent to
    Envoy as UNHEALTHY, so they exist in EDS before they take traffic)."""
    return {
        "endpoints": [
            {
                "service": r.service,
                "version": r.version,
                "replica": r.replica,
                "address": _host(r.app_address),
                "port": r.inbound_port,
                "ready": ready.get(r.key, False),
            }
            for r in plan.replicas
        ]
    }


def _host(address: str) -> str:
    return address.rpartition(":")[0]
