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
    "ReplicaState",
    "RunState",
    "StateError",
    "endpoints_document",
    "run_state",
]

STATE_FILE = "state.json"
STATE_FORMAT = 1


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

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["format"] = STATE_FORMAT
        return doc

    @classmethod
    def from_json(cls, doc: object) -> RunState:
        if not isinstance(doc, Mapping) or doc.get("format") != STATE_FORMAT:
            raise StateError(f"not a grpcmesh state document (format {STATE_FORMAT})")
        try:
            fields = {k: v for k, v in doc.items() if k not in ("format", "replicas")}
            replicas = tuple(ReplicaState(**r) for r in doc["replicas"])
            return cls(**fields, replicas=replicas)
        except (KeyError, TypeError) as exc:
            raise StateError(f"state document: {exc}") from None

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(sorted({r.service for r in self.replicas}))


def run_state(
    plan: Plan,
    *,
    launcher_pid: int,
    pids: Mapping[str, int | None],
    ready: Mapping[str, bool],
    control_plane_restarts: int = 0,
) -> RunState:
    """``pids`` is keyed by ``ProcessSpec.name``, ``ready`` by ``ReplicaPlan.key``."""
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
