"""Runs a ``Plan``: the control plane, then every replica's sidecar and app, and the ingress;
tracks readiness into ``endpoints.json``/``state.json``; restarts the control plane if it dies;
stops everything in order.

Readiness is local mode's readiness probe: a replica is ready while its app and sidecar run and
the app answers SERVING on grpc.health.v1 (the kit says so only after its sidecar's /ready).
Stop order: every endpoint not ready (callers' sidecars stop picking them), SIGTERM the apps
(they drain), then the Envoys, then the control plane; SIGKILL whatever outlives the bound.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.local.clients import ControlPlaneClient, HealthProbe, http_ok
from grpcmesh_control.local.plan import Plan, ProcessSpec, ReplicaPlan
from grpcmesh_control.local.process import ManagedProcess, death_signal_prefix
from grpcmesh_control.local.state import (
    ENDPOINTS_FILE,
    STATE_FILE,
    RunState,
    endpoints_document,
    run_state,
)
from grpcmesh_control.mesh.errors import MeshError

__all__ = ["StartupError", "Supervisor", "SupervisorSettings", "log_tail"]

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 20


class StartupError(MeshError, RuntimeError):
    """Something did not start; the message names it and quotes the end of its log."""

    def __init__(self, what: str, reason: str, log_path: Path | None = None) -> None:
        detail = f"{what}: {reason}"
        if log_path is not None:
            detail += f"\n--- last lines of {log_path} ---\n{log_tail(log_path)}"
        super().__init__(detail)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass(frozen=True)
class SupervisorSettings:
    """Bounds and poll periods, in seconds."""

    startup_timeout_s: float = 90.0
    """Until every endpoint is ready; Python apps on a busy 2-core machine start slowly."""
    stop_timeout_s: float = 10.0
    """Per stop stage (apps, Envoys, control plane) before SIGKILL."""
    unready_grace_s: float = 0.3
    """After marking every endpoint not ready and before SIGTERM: time for the control plane
    to push the EDS change, so callers stop choosing replicas that are about to go."""
    poll_starting_s: float = 0.1
    poll_ready_s: float = 1.0
    unready_after: int = 3
    """Failed health checks in a row that make a ready replica not ready."""
    restart_backoff_s: float = 0.2
    """First wait before restarting a dead control plane; doubles while it keeps dying."""
    restart_backoff_max_s: float = 5.0
    stable_after_s: float = 10.0
    """A control plane that ran this long resets the backoff."""


class Supervisor:
    """``await run(stop)`` starts the plan and returns once ``stop`` is set and all is stopped.

    ``ready`` is set (and ``on_ready`` called with the state) once every endpoint is ready and
    the ingress is live. Raises ``StartupError`` (after stopping what it started) if that does
    not happen within ``startup_timeout_s`` or a process exits while starting.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        settings: SupervisorSettings | None = None,
        env: Mapping[str, str] | None = None,
        on_ready: Callable[[RunState], None] | None = None,
    ) -> None:
        self.plan = plan
        self.settings = settings or SupervisorSettings()
        base_env = dict(os.environ if env is None else env)
        prefix = death_signal_prefix()

        def managed(spec: ProcessSpec) -> ManagedProcess:
            return ManagedProcess(spec, base_env=base_env, prefix=prefix)

        self.control_plane = managed(plan.control_plane.process)
        self.apps = {r.key: managed(r.app) for r in plan.replicas}
        self.sidecars = {r.key: managed(r.sidecar) for r in plan.replicas}
        self.ingress = managed(plan.ingress.process)
        self.prometheus = None if plan.prometheus is None else managed(plan.prometheus.process)
        self.ready = asyncio.Event()
        self._ready = {r.key: False for r in plan.replicas}
        self._became_ready = {r.key: asyncio.Event() for r in plan.replicas}
        self._on_ready = on_ready or (lambda state: None)
        self.control_plane_restarts = 0

    # --- documents -----------------------------------------------------------------------

    def state(self) -> RunState:
        processes = [
            self.control_plane,
            self.ingress,
            *self.apps.values(),
            *self.sidecars.values(),
            *self._extras(),
        ]
        return run_state(
            self.plan,
            launcher_pid=os.getpid(),
            pids={p.spec.name: p.pid for p in processes if p.running},
            ready=self._ready,
            control_plane_restarts=self.control_plane_restarts,
        )

    def _extras(self) -> list[ManagedProcess]:
        """Processes beside the mesh itself (Prometheus)."""
        return [] if self.prometheus is None else [self.prometheus]

    def _write_endpoints(self) -> None:
        doc = endpoints_document(self.plan, self._ready)
        write_atomically(self.plan.run_dir / ENDPOINTS_FILE, json.dumps(doc, indent=1) + "\n")

    def _write_state(self) -> None:
        doc = self.state().to_json()
        write_atomically(self.plan.run_dir / STATE_FILE, json.dumps(doc, indent=1) + "\n")

    def _set_ready(self, keys: Iterable[str], ready: bool) -> None:
        changed = False
        for key in keys:
            if self._ready[key] != ready:
                self._ready[key] = ready
                changed = True
                if ready:
                    self._became_ready[key].set()
                log.info("%s %s", key, "ready" if ready else "not ready")
        if changed:
            self._write_endpoints()
            self._write_state()

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            self._write_endpoints()
            await self._start_control_plane()
            # Sidecars before apps (native-sidecar order); the kit also waits for /ready.
            # Prometheus early too: it retries targets that are not up yet.
            for process in (*self.sidecars.values(), self.ingress, *self._extras()):
                await process.start()
            self._write_state()
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._keep_control_plane()),
                        *(
                            group.create_task(self._run_replica(r, self._first_of(r)))
                            for r in self.plan.replicas
                        ),
                        group.create_task(self._await_startup()),
                    ]
                    await stop.wait()
                    for task in tasks:
                        task.cancel()
            except* StartupError as failed:
                raise failed.exceptions[0] from None
        finally:
            await _uncancellable(self._shutdown())

    def _first_of(self, replica: ReplicaPlan) -> str | None:
        """The replica that must be ready before ``replica``'s app starts, if any.

        The replicas of a service share one SQLite file; two apps creating it at once can fail
        with "database is locked" (switching a new file to WAL does not wait for the other
        opener). So the service's first replica starts alone, the others once it serves.
        """
        first = next(r for r in self.plan.replicas if r.service == replica.service)
        return None if first is replica else first.key

    async def _start_control_plane(self) -> None:
        await self.control_plane.start()
        deadline = asyncio.get_running_loop().time() + self.settings.startup_timeout_s
        async with ControlPlaneClient(self.plan.control_plane.admin_address) as client:
            while not await client.healthy():
                if not self.control_plane.running:
                    raise StartupError(
                        "control plane",
                        f"exited with code {self.control_plane.returncode}",
                        self.control_plane.spec.log,
                    )
                if asyncio.get_running_loop().time() > deadline:
                    raise StartupError(
                        "control plane", "admin /healthz not answering", self.control_plane.spec.log
                    )
                await asyncio.sleep(self.settings.poll_starting_s)

    async def _await_startup(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.startup_timeout_s
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # The ingress, and Prometheus if it runs: (what, its log, its readiness URL).
            extras = [
                (
                    "ingress",
                    self.ingress.spec.log,
                    f"http://{self.plan.ingress.admin_address}/ready",
                )
            ]
            if self.plan.prometheus is not None:
                prometheus = self.plan.prometheus
                extras.append(
                    ("prometheus", prometheus.process.log, f"http://{prometheus.address}/-/ready")
                )
            while True:
                waiting = [(k, self.apps[k].spec.log) for k, ok in self._ready.items() if not ok]
                if not waiting:
                    waiting = [
                        (w, log) for w, log, url in extras if not await http_ok(session, url)
                    ]
                if not waiting:
                    break
                self._check_alive()
                if loop.time() > deadline:
                    raise StartupError(
                        ", ".join(what for what, _ in waiting),
                        f"not ready after {self.settings.startup_timeout_s:g}s",
                        waiting[0][1],
                    )
                await asyncio.sleep(self.settings.poll_starting_s)
        self._write_state()
        self.ready.set()
        self._on_ready(self.state())

    def _check_alive(self) -> None:
        for process in (
            *self.apps.values(),
            *self.sidecars.values(),
            self.ingress,
            *self._extras(),
        ):
            if process.returncode is not None:  # ended (an app not started yet is fine)
                raise StartupError(
                    process.spec.name, f"exited with code {process.returncode}", process.spec.log
                )

    async def _keep_control_plane(self) -> None:
        """Restart the control plane whenever it dies. Envoys keep their last config meanwhile
        and reconnect; content-hash versions make the restarted one push no change."""
        loop = asyncio.get_running_loop()
        backoff = self.settings.restart_backoff_s
        while True:
            started = loop.time()
            code = await self.control_plane.wait()
            if loop.time() - started > self.settings.stable_after_s:
                backoff = self.settings.restart_backoff_s
            log.warning("control plane exited with code %s; restarting in %.1fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.restart_backoff_max_s)
            await self.control_plane.start()
            self.control_plane_restarts += 1
            self._write_state()

    async def _run_replica(self, replica: ReplicaPlan, after: str | None) -> None:
        if after is not None:
            await self._became_ready[after].wait()
        await self.apps[replica.key].start()
        self._write_state()
        await self._watch(replica)

    async def _watch(self, replica: ReplicaPlan) -> None:
        app, sidecar = self.apps[replica.key], self.sidecars[replica.key]
        probe = HealthProbe(replica.app_address)
        failures = 0
        try:
            while True:
                if not (app.running and sidecar.running):
                    dead = app if not app.running else sidecar
                    log.warning("%s exited with code %s", dead.spec.name, dead.returncode)
                    self._set_ready([replica.key], False)
                    return  # apps are not restarted: the launcher is not an orchestrator
                if await probe.serving():
                    failures = 0
                    self._set_ready([replica.key], True)
                else:
                    failures += 1
                    # Like a readiness probe's failureThreshold: one slow check on a busy
                    # machine must not pull a serving replica out of the load balancer.
                    if not self._ready[replica.key] or failures >= self.settings.unready_after:
                        self._set_ready([replica.key], False)
                ready = self._ready[replica.key]
                await asyncio.sleep(
                    self.settings.poll_ready_s if ready else self.settings.poll_starting_s
                )
        finally:
            await probe.close()

    async def _shutdown(self) -> None:
        self._set_ready(self._ready, False)
        if self.control_plane.running:
            await asyncio.sleep(self.settings.unready_grace_s)
        bound = self.settings.stop_timeout_s
        for stage in (
            list(self.apps.values()),
            [*self.sidecars.values(), self.ingress, *self._extras()],
            [self.control_plane],
        ):
            await asyncio.gather(*(p.stop(bound) for p in stage))
        (self.plan.run_dir / STATE_FILE).unlink(missing_ok=True)


async def _uncancellable(stopping: Awaitable[None]) -> None:
    """Await ``stopping`` to the end even if cancelled meanwhile (a second Ctrl-C, a test's
    teardown): leaving it half done would leave processes behind. Re-raises the cancel."""
    task = asyncio.ensure_future(stopping)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError
