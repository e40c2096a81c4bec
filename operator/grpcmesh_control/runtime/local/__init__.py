"""Local mode: the whole mesh on one machine as processes (``grpcmesh up``).

``plan`` is pure (MeshServices + ports -> what to run); ``supervisor`` runs a plan (the thin
process edge); ``launcher`` ties them to a resources directory and a run directory;
``status`` merges the launcher's state with the control plane's for ``grpcmesh status``.
"""

from grpcmesh_control.runtime.local.clients import (
    AdminUnavailable,
    ApplyResult,
    ControlPlaneClient,
)
from grpcmesh_control.runtime.local.launcher import (
    DEFAULT_RUN_DIR,
    LauncherError,
    MeshOptions,
    NotConverged,
    prepare,
    read_state,
    run_mesh,
    wait_converged,
)
from grpcmesh_control.runtime.local.plan import (
    LocalSettings,
    Plan,
    PlanError,
    ReplicaPlan,
    build_plan,
    ports_needed,
)
from grpcmesh_control.runtime.local.resources import load_resource_dir
from grpcmesh_control.runtime.local.state import ReplicaState, RunState
from grpcmesh_control.runtime.local.status import status_document
from grpcmesh_control.runtime.local.supervisor import StartupError, Supervisor, SupervisorSettings

__all__ = [
    "DEFAULT_RUN_DIR",
    "AdminUnavailable",
    "ApplyResult",
    "ControlPlaneClient",
    "LauncherError",
    "LocalSettings",
    "MeshOptions",
    "NotConverged",
    "Plan",
    "PlanError",
    "ReplicaPlan",
    "ReplicaState",
    "RunState",
    "StartupError",
    "Supervisor",
    "SupervisorSettings",
    "build_plan",
    "load_resource_dir",
    "ports_needed",
    "prepare",
    "read_state",
    "run_mesh",
    "status_document",
    "wait_converged",
]
