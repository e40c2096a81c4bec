"""Runs a ``Plan`` as a kubelet runs pods: the control plane, then every replica's sidecar and
app, and the ingress; tracks readiness into ``endpoints.json``/``state.json``; restarts what
dies; follows ``resources/`` (a live ``apply``); stops everything in order.

Readiness is local mode's readiness probe: a replica is ready while its app and sidecar run and
the app answers SERVING on grpc.health.v1 (the kit says so only after its sidecar's /ready).
Restarts: an app, sidecar or the ingress that exits after ``up`` is ready is started again
after a back-off (``restart_backoff_s``, doubling per crash, capped at
``restart_backoff_max_s``, reset once it ran ``stable_after_s``), counted in ``state.json``.
While ``up`` is starting, an exit fails it instead, with the end of the log. The control plane
is restarted likewise, and its liveness probed (``/healthz``): ``liveness_failures`` missed
probes in a row (hung, or swapping) and it is killed, then restarted; the Envoys keep their
last configuration meanwhile.
Following resources: the launcher's ``replan`` turns the changed MeshServices into a new plan;
new replicas are started (sidecar, then app), removed ones drained and stopped, replicas whose
command changed restarted one at a time, and changed ``spec.config`` written to the running
replicas' ``config.yaml``, which the kit reloads live.
Stop order: every endpoint not ready (callers' sidecars stop picking them), SIGTERM the apps
(they drain), then the Envoys, then the control plane; SIGKILL whatever outlives the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.local.clients import (
    ControlPlaneClient,
    HealthProbe,
    NotConverged,
    http_ok,
    wait_converged,
)
from grpcmesh_control.local.plan import FILE_MODE, Plan, PlanError, ProcessSpec, ReplicaPlan
from grpcmesh_control.local.process import ManagedProcess, death_signal_prefix
from grpcmesh_control.local.sources import (
    RESOURCES_DIR,
    content_digest,
    parse_resource_files,
    read_resource_files,
)
from grpcmesh_control.local.sources.descriptors import local_protos, read_descriptor_sets
from grpcmesh_control.local.state import (
    ENDPOINTS_FILE,
    STATE_FILE,
    Reconciled,
    RunState,
    endpoints_document,
    run_state,
)
from grpcmesh_control.mesh.errors import InvalidResourceSet, MeshError
from grpcmesh_control.mesh.model import MeshService

__all__ = [
    "Replan",
    "RestartBackoff",
    "StartupError",
    "Supervisor",
    "SupervisorSettings",
    "log_tail",
]

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


Replan = Callable[[Plan, Sequence[MeshService]], Plan]
"""The plan for changed MeshServices, from the running one (``plan.replan`` plus fresh ports)."""


@dataclass(frozen=True)
class SupervisorSettings:
    """Bounds and poll periods, in seconds."""

    startup_timeout_s: float = 90.0
    """Until every endpoint is ready; Python apps on a busy 2-core machine start slowly."""
    stop_timeout_s: float = 10.0
    """Per stop stage (apps, Envoys, control plane) before SIGKILL."""
    unready_grace_s: float = 0.3
    """After marking endpoints not ready and before SIGTERM: time for the control plane to
    push the EDS change, so callers stop choosing replicas that are about to go."""
    poll_starting_s: float = 0.1
    poll_ready_s: float = 1.0
    unready_after: int = 3
    """Failed health checks in a row that make a ready replica not ready."""
    restart_backoff_s: float = 0.2
    """First wait before restarting a process that exited; doubles while it keeps exiting."""
    restart_backoff_max_s: float = 5.0
    stable_after_s: float = 10.0
    """A process that ran this long resets its back-off."""
    liveness_period_s: float = 1.0
    """Between probes of the control plane's /healthz."""
    liveness_timeout_s: float = 1.0
    liveness_failures: int = 3
    """Missed probes in a row after which the control plane is killed and restarted."""
    resources_poll_s: float = 0.2
    """Between polls of ``resources/`` for changes to follow."""


class RestartBackoff:
    """Exponential restart delays, reset when the process ran for ``stable_after_s``."""

    def __init__(self, settings: SupervisorSettings) -> None:
        self._settings = settings
        self._next = settings.restart_backoff_s

    def delay(self, ran_for: float) -> float:
        if ran_for >= self._settings.stable_after_s:
            self._next = self._settings.restart_backoff_s
        delay = self._next
        self._next = min(delay * 2, self._settings.restart_backoff_max_s)
        return delay


class Supervisor:
    """``await run(stop)`` starts the plan and returns once ``stop`` is set and all is stopped.

    ``ready`` is set (and ``on_ready`` called with the state) once every endpoint is ready and
    the ingress is live. Raises ``StartupError`` (after stopping what it started) if that does
    not happen within ``startup_timeout_s`` or a process exits while starting. With ``replan``
    it follows changes of ``resources/`` (validated against the protos there, as the control
    plane does).
    """

    def __init__(
        self,
        plan: Plan,
        *,
        settings: SupervisorSettings | None = None,
        env: Mapping[str, str] | None = None,
        on_ready: Callable[[RunState], None] | None = None,
        replan: Replan | None = None,
    ) -> None:
        self.plan = plan
        self.settings = settings or SupervisorSettings()
        self._base_env = dict(os.environ if env is None else env)
        self._prefix = death_signal_prefix()
        self.control_plane = self._managed(plan.control_plane.process)
        self.ingress = self._managed(plan.ingress.process)
        self.prometheus = (
            None if plan.prometheus is None else self._managed(plan.prometheus.process)
        )
        # Every replica with processes, the plan's and those being stopped, by key.
        self.replicas: dict[str, ReplicaPlan] = {}
        self.apps: dict[str, ManagedProcess] = {}
        self.sidecars: dict[str, ManagedProcess] = {}
        self._ready: dict[str, bool] = {}
        self._became_ready: dict[str, asyncio.Event] = {}
        for replica in plan.replicas:
            self._add(replica)
        self._initial = frozenset(self.replicas)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()
        self._on_ready = on_ready or (lambda state: None)
        self._replan = replan
        self._resources_digest: str | None = None
        self.reconciled: Reconciled | None = None

    def _managed(self, spec: ProcessSpec) -> ManagedProcess:
        return ManagedProcess(spec, base_env=self._base_env, prefix=self._prefix)

    def _add(self, replica: ReplicaPlan) -> None:
        key = replica.key
        self.replicas[key] = replica
        self.apps[key] = self._managed(replica.app)
        self.sidecars[key] = self._managed(replica.sidecar)
        self._ready[key] = False
        self._became_ready[key] = asyncio.Event()

    def _forget(self, key: str) -> None:
        for table in (self.replicas, self.apps, self.sidecars, self._ready, self._became_ready):
            table.pop(key, None)

    @property
    def control_plane_restarts(self) -> int:
        return max(0, self.control_plane.starts - 1)

    # --- documents -----------------------------------------------------------------------

    def _running_plan(self) -> Plan:
        """The plan with every replica that has processes (those being stopped too)."""
        return replace(self.plan, replicas=tuple(self.replicas.values()))

    def state(self) -> RunState:
        processes = [
            self.control_plane,
            self.ingress,
            *self.apps.values(),
            *self.sidecars.values(),
            *self._extras(),
        ]
        return run_state(
            self._running_plan(),
            launcher_pid=os.getpid(),
            pids={p.spec.name: p.pid for p in processes if p.running},
            ready=self._ready,
            control_plane_restarts=self.control_plane_restarts,
            restarts={p.spec.name: max(0, p.starts - 1) for p in processes},
            reconciled=self.reconciled,
            serving=self.ready.is_set(),
        )

    def _extras(self) -> list[ManagedProcess]:
        """Processes beside the mesh itself (Prometheus)."""
        return [] if self.prometheus is None else [self.prometheus]

    def _write_endpoints(self) -> None:
        doc = endpoints_document(self._running_plan(), self._ready)
        write_atomically(self.plan.run_dir / ENDPOINTS_FILE, json.dumps(doc, indent=1) + "\n")

    def _write_state(self) -> None:
        doc = self.state().to_json()
        write_atomically(self.plan.run_dir / STATE_FILE, json.dumps(doc, indent=1) + "\n")

    def _set_ready(self, keys: Iterable[str], ready: bool) -> None:
        changed = False
        for key in keys:
            if key in self._ready and self._ready[key] != ready:
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
            self._resources_digest = self._read_digest()
            self.reconciled = Reconciled(self._resources_digest)  # what `up` started from
            await self._start_control_plane()
            # Sidecars before apps (native-sidecar order); the kit also waits for /ready.
            # Prometheus early too: it retries targets that are not up yet.
            for process in (*self.sidecars.values(), self.ingress, *self._extras()):
                await process.start()
            self._write_state()
            try:
                async with asyncio.TaskGroup() as group:
                    self._group = group
                    tasks = [
                        group.create_task(self._keep(self.control_plane, "control plane")),
                        group.create_task(self._probe_control_plane()),
                        group.create_task(self._keep(self.ingress, "ingress")),
                        group.create_task(self._await_startup()),
                    ]
                    for replica in self.plan.replicas:
                        self._spawn(replica)
                    await stop.wait()
                    for task in [*tasks, *self._tasks.values()]:
                        task.cancel()
            except* StartupError as failed:
                raise failed.exceptions[0] from None
        finally:
            self._group = None
            await _uncancellable(self._shutdown())

    def _spawn(self, replica: ReplicaPlan) -> None:
        assert self._group is not None
        self._tasks[replica.key] = self._group.create_task(
            self._run_replica(replica, self._first_of(replica)), name=replica.key
        )

    def _first_of(self, replica: ReplicaPlan) -> str | None:
        """The replica that must be ready before ``replica``'s app starts, if any.

        The replicas of a service share one SQLite file; two apps creating it at once can fail
        with "database is locked" (switching a new file to WAL does not wait for the other
        opener). So the service's first replica starts alone, the others once it serves.
        """
        first = next(r for r in self.replicas.values() if r.service == replica.service)
        return None if first.key == replica.key else first.key

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
                waiting = [
                    (k, self.apps[k].spec.log)
                    for k in self._initial
                    if k in self._ready and not self._ready[k]
                ]
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
        await self._await_endpoints_pushed(deadline - loop.time())
        self.ready.set()
        self._write_state()
        self._on_ready(self.state())
        if self._replan is not None:
            await self._follow_resources()

    async def _await_endpoints_pushed(self, timeout_s: float) -> None:
        """Every proxy ACKed config that holds every ready endpoint. A replica is ready before
        the control plane has read its endpoint and pushed it to its callers' sidecars; a call
        in that gap fails with "no healthy upstream", so "mesh ready" waits for the push."""
        ready = Counter(self.replicas[k].service for k, ok in self._ready.items() if ok)
        try:
            await wait_converged(
                self.plan.control_plane.admin_address,
                self.plan.node_ids,
                ready_endpoints=ready,
                timeout_s=max(1.0, timeout_s),
            )
        except NotConverged as exc:
            raise StartupError("proxies", str(exc), self.control_plane.spec.log) from None

    def _check_alive(self) -> None:
        """While starting, an exited ingress or Prometheus fails ``up`` (replicas: their task)."""
        for process in (self.ingress, *self._extras()):
            if process.returncode is not None:
                raise StartupError(
                    process.spec.name, f"exited with code {process.returncode}", process.spec.log
                )

    async def _keep(self, process: ManagedProcess, what: str) -> None:
        """Start ``process`` again whenever it exits, after a back-off. For the control plane
        the Envoys keep their last config meanwhile and reconnect; content-hash versions make
        the restarted one push no change."""
        loop = asyncio.get_running_loop()
        backoff = RestartBackoff(self.settings)
        while True:
            started = loop.time()
            code = await process.wait()
            if not self.ready.is_set() and process is not self.control_plane:
                return  # while starting, _check_alive reports it and `up` fails
            delay = backoff.delay(loop.time() - started)
            log.warning("%s exited with code %s; restarting in %.1fs", what, code, delay)
            await asyncio.sleep(delay)
            await process.start()
            self._write_state()

    async def _probe_control_plane(self) -> None:
        """The control plane's liveness probe: killed after ``liveness_failures`` missed
        /healthz in a row (``_keep`` restarts it). Probing starts again after each restart,
        once it answered or ``startup_timeout_s`` passed (its startup probe)."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        address = self.plan.control_plane.admin_address
        async with ControlPlaneClient(address, timeout_s=settings.liveness_timeout_s) as client:
            starts, since, alive, failures = self.control_plane.starts, loop.time(), True, 0
            while True:
                await asyncio.sleep(settings.liveness_period_s)
                if self.control_plane.starts != starts:  # restarted meanwhile
                    starts, since, alive, failures = (
                        self.control_plane.starts,
                        loop.time(),
                        False,
                        0,
                    )
                if not self.control_plane.running:
                    continue
                if await client.healthy():
                    alive, failures = True, 0
                    continue
                if not alive and loop.time() - since < settings.startup_timeout_s:
                    continue
                failures += 1
                if failures >= settings.liveness_failures:
                    log.warning(
                        "control plane missed %d liveness probes (/healthz): killing it",
                        failures,
                    )
                    self.control_plane.signal(signal.SIGKILL)
                    failures = 0
                    await self.control_plane.wait()

    async def _run_replica(self, replica: ReplicaPlan, after: str | None) -> None:
        key = replica.key
        app, sidecar = self.apps[key], self.sidecars[key]
        if after is not None and after in self._became_ready:
            await self._became_ready[after].wait()
        if not sidecar.running:
            await sidecar.start()
        await app.start()
        self._write_state()
        await self._watch(replica)

    async def _watch(self, replica: ReplicaPlan) -> None:
        key = replica.key
        app, sidecar = self.apps[key], self.sidecars[key]
        loop = asyncio.get_running_loop()
        backoff = RestartBackoff(self.settings)
        started = loop.time()
        probe = HealthProbe(replica.app_address)
        failures = 0
        try:
            while True:
                dead = [p for p in (sidecar, app) if not p.running]
                if dead:
                    for process in dead:
                        log.warning("%s exited with code %s", process.spec.name, process.returncode)
                    self._set_ready([key], False)
                    if key in self._initial and not self.ready.is_set():
                        raise StartupError(
                            dead[0].spec.name,
                            f"exited with code {dead[0].returncode}",
                            dead[0].spec.log,
                        )
                    delay = backoff.delay(loop.time() - started)
                    log.warning("restarting %s in %.1fs", key, delay)
                    await asyncio.sleep(delay)
                    for process in (sidecar, app):  # the sidecar first, as at start
                        if not process.running:
                            await process.start()
                    started, failures = loop.time(), 0
                    self._write_state()
                    continue
                if await probe.serving():
                    failures = 0
                    self._set_ready([key], True)
                else:
                    failures += 1
                    # Like a readiness probe's failureThreshold: one slow check on a busy
                    # machine must not pull a serving replica out of the load balancer.
                    if not self._ready[key] or failures >= self.settings.unready_after:
                        self._set_ready([key], False)
                ready = self._ready[key]
                await asyncio.sleep(
                    self.settings.poll_ready_s if ready else self.settings.poll_starting_s
                )
        finally:
            await probe.close()

    # --- following resources/ (live apply) -------------------------------------------------

    def _read_digest(self) -> str:
        return content_digest(read_resource_files(self.plan.run_dir / RESOURCES_DIR))

    async def _follow_resources(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resources_poll_s)
            try:
                files = read_resource_files(self.plan.run_dir / RESOURCES_DIR)
            except OSError:
                continue  # a file replaced between listing and reading: next poll
            digest = content_digest(files)
            if digest == self._resources_digest:
                continue
            self._resources_digest = digest
            try:
                resources = self.plan.run_dir / RESOURCES_DIR
                catalog = local_protos(read_descriptor_sets(resources)).catalog
                services = parse_resource_files(files, catalog=catalog).services
                assert self._replan is not None
                plan = self._replan(self.plan, services)
            except OSError:  # a descriptor set replaced while read: the next poll retries
                self._resources_digest = None
                continue
            except (InvalidResourceSet, PlanError) as exc:
                # The control plane reports invalid files too; processes stay as they are.
                log.warning("resources changed but cannot be followed: %s", exc)
                self.reconciled = Reconciled(digest, error=str(exc))
                self._write_state()
                continue
            await self._reconcile(plan, digest)

    async def _reconcile(self, plan: Plan, digest: str) -> None:
        old = {r.key: r for r in self.plan.replicas}
        new = {r.key: r for r in plan.replicas}
        started = [k for k in new if k not in old]
        stopped = [k for k in old if k not in new]
        restarted = [
            k
            for k in new
            if k in old
            and (new[k].app, new[k].sidecar, new[k].bootstrap)
            != (old[k].app, old[k].sidecar, old[k].bootstrap)
        ]
        reconfigured = [
            k
            for k in new
            if k in old and k not in restarted and new[k].config_text != old[k].config_text
        ]
        log.info(
            "following resources: start %s, stop %s, restart %s, reconfigure %s",
            started or "-",
            stopped or "-",
            restarted or "-",
            reconfigured or "-",
        )
        old_prometheus, self.plan = self.plan.prometheus, plan
        if plan.prometheus is not None and plan.prometheus != old_prometheus:
            # Prometheus re-reads its configuration on SIGHUP: new replicas get scraped.
            write_atomically(plan.prometheus.config_path, plan.prometheus.config_text)
            if self.prometheus is not None:
                self.prometheus.signal(signal.SIGHUP)
        for key in reconfigured:
            replica = new[key]
            self.replicas[key] = replica
            write_atomically(replica.config_path, replica.config_text)
        for key in started:
            self._write_files(new[key])
            self._add(new[key])
        self.reconciled = Reconciled(
            digest,
            started=tuple(started),
            stopped=tuple(stopped),
            restarted=tuple(restarted),
            reconfigured=tuple(reconfigured),
        )
        self._write_endpoints()  # the new replicas, not ready: in EDS before they take traffic
        self._write_state()
        for key in started:
            self._spawn(new[key])
        await asyncio.gather(*(self._retire(key) for key in stopped))
        for key in restarted:  # one at a time, each ready before the next goes
            await self._retire(key)
            self._write_files(new[key])
            self._add(new[key])
            self._write_endpoints()
            self._spawn(new[key])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.startup_timeout_s):
                    await self._became_ready[key].wait()
        self._write_endpoints()
        self._write_state()

    def _write_files(self, replica: ReplicaPlan) -> None:
        replica.dir.mkdir(parents=True, exist_ok=True)
        # The bootstrap (and a proxyless app's token file) holds the node's xDS token: private,
        # like the plan's other files.
        for path, text in replica.files().items():
            write_atomically(path, text, mode=FILE_MODE)

    async def _retire(self, key: str) -> None:
        """Drain and stop one replica: not ready (callers' sidecars stop choosing it), a grace
        for the EDS push, SIGTERM the app (the kit drains in-flight calls), then its sidecar."""
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_ready([key], False)
        await asyncio.sleep(self.settings.unready_grace_s)
        bound = self.settings.stop_timeout_s
        await self.apps[key].stop(bound)
        await self.sidecars[key].stop(bound)
        log.info("%s stopped", key)
        self._forget(key)
        self._write_endpoints()
        self._write_state()

    async def _shutdown(self) -> None:
        self._set_ready(list(self._ready), False)
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
