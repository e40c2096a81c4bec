"""``grpcmesh down``: stop the mesh a ``grpcmesh up`` runs in a state directory, from outside.

The launcher owns its processes and already stops them in order on SIGTERM (endpoints not
ready, apps drain, Envoys, control plane). ``down`` sends it that signal and waits, bounded,
until the launcher and every process ``state.json`` names have ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from grpcmesh_control.local.launcher import read_state
from grpcmesh_control.local.process import is_alive
from grpcmesh_control.local.state import RunState
from grpcmesh_control.mesh.errors import MeshError

__all__ = ["MeshNotRunning", "MeshNotStopped", "stop_mesh"]


class MeshNotRunning(MeshError):
    """No launcher is alive for the state directory."""


class MeshNotStopped(MeshError):
    """The mesh's processes did not all end in time; the message names them."""


def stop_mesh(run_dir: Path, *, timeout_s: float = 30.0, poll_s: float = 0.05) -> RunState:
    """SIGTERM the launcher of ``run_dir`` and wait until it and its processes ended; returns
    the state the mesh had. Raises ``MeshNotRunning`` or ``MeshNotStopped``."""
    state = read_state(run_dir.resolve())
    if state is None:
        raise MeshNotRunning(f"no mesh running in {run_dir}")
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.launcher_pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while True:
        left = {name: pid for name, pid in _pids(state).items() if is_alive(pid)}
        if not left:
            return state
        if time.monotonic() > deadline:
            names = ", ".join(f"{name} (pid {pid})" for name, pid in sorted(left.items()))
            raise MeshNotStopped(f"still running after {timeout_s:g}s: {names}")
        time.sleep(poll_s)


def _pids(state: RunState) -> dict[str, int]:
    pids: dict[str, int | None] = {
        "launcher": state.launcher_pid,
        "control plane": state.control_plane_pid,
        "ingress": state.ingress_pid,
        "prometheus": state.prometheus_pid,
    }
    for r in state.replicas:
        pids[f"{r.service}/{r.replica} app"] = r.app_pid
        pids[f"{r.service}/{r.replica} envoy"] = r.sidecar_pid
    return {name: pid for name, pid in pids.items() if pid is not None}
