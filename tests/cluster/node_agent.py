"""A test node agent: the kubelet of one Node, for pods that must really run.

The hollow nodes of ``../shared/kube`` run no process and execute no probe, and they leave a
pod with a native sidecar in ``Init`` forever. ``NodeAgent`` plays the kubelet of a Node of its
own on a control plane started without hollow nodes:

- it registers the Node (Ready, capacity/allocatable for the scheduler) and renews its Lease
  in ``kube-node-lease`` (the node-lifecycle controller's heartbeat), and watches the pods
  bound to it (``fieldSelector=spec.nodeName=<node>``);
- it gives each pod a loopback pod IP of its own, ``127.<2-9>.<block>.<n>``: a /24 block per
  agent, held with a lock file so concurrent test runs on this machine never share one, and
  clear of the hollow nodes' ``127.10+``;
- it starts the containers from the pod's own spec (``agent.podspec``: env with fieldRef and
  key refs, ``$(VAR)`` expansion, volumes written to folders) with a runner the test chooses
  (``agent.runners``: local processes from the venv, or the real images via image-kit);
- init containers run to completion in order; a native sidecar (``restartPolicy: Always``)
  starts in its place and must be *started* (startupProbe passed) before the next one;
- it runs startup, readiness and liveness probes itself against the pod IP and writes the pod
  status as a kubelet does (phase, conditions, podIP(s), hostIP(s), container statuses with
  ready/started/state/restartCount), so readiness is earned and the real EndpointSlice
  controller follows it;
- on a graceful delete it stops the app containers (SIGTERM, SIGKILL after the grace
  period), then the sidecars in reverse order, and removes the pod with grace 0.

Service DNS: there is no CoreDNS here, so the agent serves DNS itself (``agent.dns``) on a
loopback port: ``hosts`` (a fixed table the test gives), then Service names
(``<svc>.<ns>.svc[.cluster.local]``) resolved to the Service's ready endpoint addresses (no
kube-proxy: a client dials the pod IP at the Service port, so ``port`` must equal
``targetPort``). Every Envoy the agent starts (a container whose command is ``envoy``) gets it
as its resolver, merged into its ``--config-yaml``, the way a kubelet hands containers a
``resolv.conf``; image runs also get ``hosts`` as ``--add-host``. Other programs use the
system resolver: point them at IPs. One exception: an Envoy run from its image also gets, as
``--add-host``, every Service name its command or mounted files mention, for what Envoy
resolves with gRPC's own resolver rather than its DNS clusters (``google_grpc`` ADS, the STS
token exchange); it starts once each has a ready endpoint.

Use it from sync tests through ``AgentThread`` (its own event loop in a thread) and the
``node_agent`` fixtures in ``tests/cluster/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from tests.cluster.agent.api import ApiError, KubeApi
from tests.cluster.agent.dns import DnsServer, with_envoy_resolver
from tests.cluster.agent.podspec import (
    Mount,
    PodFacts,
    ResolveError,
    container_env,
    expand_all,
    materialise_volumes,
    mounts_of,
    rewrite_volume_files,
)
from tests.cluster.agent.probes import ProbeTiming, probe_once
from tests.cluster.agent.runners import Launch, Runner, Running

__all__ = ["AgentOptions", "AgentThread", "IpBlock", "NodeAgent"]

log = logging.getLogger(__name__)

_SERVICE_NAME = re.compile(
    r"\b[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\.svc(?:\.[a-z0-9-]+)*"
)
_MAX_SCANNED = 1 << 20  # bytes of a mounted file scanned for Service names
_SERVICE_POLL = 0.5  # seconds between looks at a Service an Envoy waits for
T = TypeVar("T")

HOST_IP = "127.0.0.1"
KUBELET_VERSION = "v1.36.2"
_LOCK_DIR = Path(tempfile.gettempdir()) / "grpcmesh-node-agent"
_MAX_BACKOFF = 300.0  # the kubelet's cap on crash-loop back-off


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- pod IPs ----------------------------------------------------------------------------------


class IpBlock:
    """A /24 of loopback addresses, ``127.<2-9>.<0-255>.0/24``, held by a lock file for the
    agent's lifetime so that agents of concurrent test runs on one machine never share one."""

    def __init__(self) -> None:
        _LOCK_DIR.mkdir(parents=True, exist_ok=True)
        self._lock: IO[str] | None = None
        for second, third in itertools.product(range(2, 10), range(256)):
            handle = (_LOCK_DIR / f"127.{second}.{third}.lock").open("w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._lock, self.prefix = handle, f"127.{second}.{third}"
            break
        else:
            raise RuntimeError(f"every loopback block under {_LOCK_DIR} is taken")
        self._free = list(range(1, 255))
        self._used: set[str] = set()

    def allocate(self) -> str:
        if not self._free:
            raise RuntimeError(f"no free pod IP left in {self.prefix}.0/24")
        address = f"{self.prefix}.{self._free.pop(0)}"
        self._used.add(address)
        return address

    def release(self, address: str) -> None:
        if address in self._used:
            self._used.discard(address)
            self._free.append(int(address.rsplit(".", 1)[1]))

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


# --- options ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentOptions:
    node_name: str
    runner: Runner
    capacity: Mapping[str, str] = field(
        default_factory=lambda: {
            "cpu": "32",
            "memory": "64Gi",
            "pods": "250",
            "ephemeral-storage": "100Gi",
        }
    )
    """What the Node reports as capacity and allocatable (the scheduler fits pods to it)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    hosts: Mapping[str, str] = field(default_factory=dict)
    """DNS name -> address the pods resolve before Service names (image runs: ``--add-host``)."""
    cluster_domain: str = "cluster.local"
    restart_backoff: float = 10.0
    """Seconds before the first restart of an exited container, doubled per restart up to
    five minutes (the kubelet's crash-loop back-off)."""
    heartbeat_seconds: float = 10.0
    """Lease renewal period (the kubelet's default); the lease lasts four of them."""
    root: Path | None = None
    """Where pods' folders (volumes, logs) go; a fresh temporary folder by default."""


# --- one container ----------------------------------------------------------------------------


@dataclass
class ContainerState:
    spec: Mapping[str, Any]
    init: bool
    running: Running | None = None
    started_at: str | None = None
    key: str | None = None
    started: bool = False
    ready: bool = False
    restart_count: int = 0
    waiting_reason: str = "PodInitializing"
    waiting_message: str = ""
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    held: bool = False
    """Stopped by the test (``stop_container``): not restarted until ``start_container``."""
    started_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def sidecar(self) -> bool:
        return self.init and self.spec.get("restartPolicy") == "Always"

    def state(self) -> dict[str, Any]:
        if self.running is not None and self.started_at is not None:
            return {"running": {"startedAt": self.started_at}}
        if self.terminated is not None:
            return {"terminated": self.terminated}
        waiting: dict[str, Any] = {"reason": self.waiting_reason}
        if self.waiting_message:
            waiting["message"] = self.waiting_message
        return {"waiting": waiting}

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state(),
        }
        if self.key is not None:
            status["containerID"] = f"agent://{self.key}"
        if self.last_terminated is not None:
            status["lastState"] = {"terminated": self.last_terminated}
        return status


# --- one pod ----------------------------------------------------------------------------------


class PodWorker:
    """Runs one pod: prepare, init containers, app containers, probes, status, termination."""

    def __init__(self, agent: NodeAgent, pod: Mapping[str, Any]) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.ip = agent.ips.allocate()
        self.folder = agent.root / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        spec = pod["spec"]
        self.init_containers = [ContainerState(c, True) for c in spec.get("initContainers") or []]
        self.containers = [ContainerState(c, False) for c in spec["containers"]]
        self.volumes: dict[str, Path] = {}
        self.initialized = False
        self.terminating = False
        self.finished = False
        self.start_time = _now()
        self._transitions: dict[str, tuple[str, str]] = {}
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.main: asyncio.Task[None] | None = None
        self.writer: asyncio.Task[None] | None = None

    # -- lifecycle --

    def start(self) -> None:
        self.writer = asyncio.create_task(self._write_status(), name=f"status {self.name}")
        self.main = asyncio.create_task(self._run(), name=f"pod {self.name}")

    def all_containers(self) -> list[ContainerState]:
        return [*self.init_containers, *self.containers]

    def container(self, name: str) -> ContainerState:
        for state in self.all_containers():
            if state.name == name:
                return state
        raise KeyError(f"pod {self.namespace}/{self.name} has no container {name!r}")

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def mark(self) -> None:
        self._dirty.set()

    async def _run(self) -> None:
        self.mark()
        try:
            await self._prepare()
            for state in self.init_containers:
                if self.terminating:
                    return
                if state.sidecar:
                    state.task = self._spawn(self._supervise(state), f"{self.name}/{state.name}")
                    await self._until(state.started_event.wait())
                elif not await self._run_to_completion(state):
                    return
            if self.terminating:
                return
            self.initialized = True
            self.mark()
            for state in self.containers:
                state.waiting_reason = "ContainerCreating"
                state.task = self._spawn(self._supervise(state), f"{self.name}/{state.name}")
            self.mark()
        except Exception:
            log.exception("pod %s/%s failed", self.namespace, self.name)
            raise

    async def _until(self, awaitable: Awaitable[Any]) -> None:
        """Wait for ``awaitable`` unless the pod starts terminating first."""
        waiting = asyncio.ensure_future(awaitable)
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiting, stopping):
            task.cancel()

    async def _prepare(self) -> None:
        """The pod's sandbox: its folder and volumes. Retried while a reference is missing,
        as the kubelet does (the pod stays ContainerCreating)."""
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        while not self.terminating:
            try:
                self.volumes = await materialise_volumes(
                    self.pod, self.facts(), self.agent.objects, self.folder / "volumes"
                )
                if self.agent.options.runner.rewrites_paths:
                    specs = [s.spec for s in self.all_containers()]
                    mounts = [m for spec in specs for m in mounts_of(spec, self.volumes)]
                    rewrite_volume_files(self.volumes, self.pod, mounts)
                return
            except ResolveError as exc:
                for state in self.all_containers():
                    state.waiting_reason, state.waiting_message = "ContainerCreating", str(exc)
                self.mark()
                await self._until(asyncio.sleep(1.0))

    def facts(self) -> PodFacts:
        return PodFacts(self.pod, self.ip, HOST_IP, self.agent.options.capacity)

    async def _launch(self, state: ContainerState, attempt: int) -> Launch:
        spec = state.spec
        env = await container_env(spec, self.facts(), self.agent.objects, self.agent.base_env(self))
        security = {**(self.pod["spec"].get("securityContext") or {})}
        security |= spec.get("securityContext") or {}
        uid = security.get("runAsUser")
        user = (int(uid), security.get("runAsGroup")) if uid is not None else None
        command = expand_all(spec["command"], env) if spec.get("command") else None
        args = expand_all(spec["args"], env) if "args" in spec else None
        hosts = dict(self.agent.options.hosts)
        mounts = mounts_of(spec, self.volumes)
        if (
            command
            and Path(command[0]).name == "envoy"
            and self.agent.options.runner.name == "image"
        ):
            hosts |= await self._service_hosts([*command, *(args or [])], mounts)
        if command and Path(command[0]).name == "envoy" and self.agent.dns.port:
            command, args = with_envoy_resolver([*command, *(args or [])], self.agent.dns.port), []
        return Launch(
            key=f"{self.agent.options.node_name}-{self.namespace}-{self.name}-{state.name}-{attempt}",
            image=str(spec.get("image", "")),
            command=command,
            args=args,
            env=env,
            mounts=mounts,
            working_dir=spec.get("workingDir"),
            user=user,
            read_only_root=bool(security.get("readOnlyRootFilesystem", False)),
            scratch=self.folder,
            log=self.folder / "logs" / f"{state.name}.log",
            hosts=hosts,
        )

    async def _service_hosts(self, argv: list[str], mounts: list[Mount]) -> dict[str, str]:
        """Every Service name in ``argv`` and the mounted files -> one of its ready endpoint
        addresses, once each such Service has one (the container waits until then)."""
        texts = list(argv)
        for mount in mounts:
            paths = [mount.host_path] if mount.host_path.is_file() else []
            if mount.host_path.is_dir():
                paths = [p for p in mount.host_path.rglob("*") if p.is_file()]
            for path in paths:
                if path.stat().st_size <= _MAX_SCANNED:
                    texts.append(path.read_text(errors="replace"))
        names = {m.group(0) for text in texts for m in _SERVICE_NAME.finditer(text)}
        # Polled here rather than failing the start: the restart backoff (10 s and more)
        # would delay every Envoy far past the moment its Service answers.
        while True:
            hosts: dict[str, str] = {}
            missing: list[str] = []
            for name in sorted(names):
                addresses = await self.agent.resolve_service(name)
                if addresses is None:
                    continue  # not a Service (of this cluster domain): the system resolver's
                if addresses:
                    hosts[name] = addresses[0]
                else:
                    missing.append(name)
            if not missing:
                return hosts
            if self.terminating:
                raise ResolveError(f"Service name {missing[0]} has no ready endpoint yet")
            await self._until(asyncio.sleep(_SERVICE_POLL))

    async def _start_container(self, state: ContainerState) -> bool:
        """Start ``state``'s process; False (and a waiting reason) when it cannot start."""
        attempt = state.restart_count
        try:
            launch = await self._launch(state, attempt)
            running = await self.agent.options.runner.start(launch)
        except (ResolveError, OSError, ValueError) as exc:
            state.waiting_reason, state.waiting_message = "CreateContainerConfigError", str(exc)
            self.mark()
            return False
        state.running, state.key, state.started_at = running, launch.key, _now()
        state.terminated, state.waiting_message = None, ""
        self.mark()
        return True

    def _record_exit(self, state: ContainerState, code: int) -> None:
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": state.started_at,
            "finishedAt": _now(),
            "containerID": f"agent://{state.key}",
        }
        if code < 0:  # asyncio reports death by signal N as -N
            terminated |= {"exitCode": 128 - code, "signal": -code}
        state.running = None
        state.terminated = terminated
        state.started = state.ready = False
        self.mark()

    def _backoff(self, state: ContainerState) -> float:
        return float(min(self.agent.options.restart_backoff * 2**state.restart_count, _MAX_BACKOFF))

    async def _run_to_completion(self, state: ContainerState) -> bool:
        """A plain init container: run until it exits 0, retried per the pod's restartPolicy.
        False when the pod failed or started terminating."""
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while not self.terminating:
            if await self._start_container(state) and state.running is not None:
                state.started = True
                if not self.agent.options.runner.runs_processes:
                    await state.running.signal(signal.SIGTERM)  # nothing to run: done
                self.mark()
                code = await state.running.wait()
                self._record_exit(state, code)
                if code == 0:
                    return True
                if policy == "Never":
                    return False
            delay = self._backoff(state)
            state.last_terminated = state.terminated
            state.restart_count += 1
            state.waiting_reason = "CrashLoopBackOff"
            self.mark()
            await self._until(asyncio.sleep(delay))
        return False

    def _restarts(self, state: ContainerState, code: int) -> bool:
        if state.sidecar:
            return True
        policy = self.pod["spec"].get("restartPolicy", "Always")
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    async def _supervise(self, state: ContainerState) -> None:
        """A long-running container (app or sidecar): start, probe, restart per policy."""
        while not self.terminating and not state.held:
            if not await self._start_container(state) or state.running is None:
                await self._until(asyncio.sleep(self._backoff(state)))
                continue
            running = state.running
            probes = self._spawn(self._probe(state, running), f"probes {state.name}")
            code = await running.wait()
            probes.cancel()
            self._record_exit(state, code)
            if self.terminating or state.held or not self._restarts(state, code):
                return
            delay = self._backoff(state)
            state.last_terminated = state.terminated
            state.terminated = None
            state.restart_count += 1
            state.waiting_reason = "CrashLoopBackOff"
            self.mark()
            await self._until(asyncio.sleep(delay))

    async def _probe(self, state: ContainerState, running: Running) -> None:
        spec = state.spec
        if not self.agent.options.runner.runs_processes:
            state.started, state.ready = True, not state.init or state.sidecar
            state.started_event.set()
            self.mark()
            return
        startup = spec.get("startupProbe")
        if startup is not None and not await self._probe_loop(state, running, startup, "startup"):
            return
        state.started = True
        state.started_event.set()
        self.mark()
        readiness, liveness = spec.get("readinessProbe"), spec.get("livenessProbe")
        if (not state.init or state.sidecar) and readiness is None:
            state.ready = True
            self.mark()
        async with asyncio.TaskGroup() as group:
            if readiness is not None and (not state.init or state.sidecar):
                group.create_task(self._probe_loop(state, running, readiness, "readiness"))
            if liveness is not None:
                group.create_task(self._probe_loop(state, running, liveness, "liveness"))

    async def _probe_loop(
        self, state: ContainerState, running: Running, probe: Mapping[str, Any], kind: str
    ) -> bool:
        """Probe until the outcome is settled: startup returns True on success; liveness and
        readiness run until the container stops. A failed startup/liveness kills it."""
        timing = ProbeTiming(probe)
        if timing.initial_delay:
            await asyncio.sleep(timing.initial_delay)
        successes = failures = 0
        while True:
            ok = await probe_once(probe, state.spec, self.ip, running.exec)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if kind == "startup" and successes >= 1:
                return True
            if kind == "readiness":
                if ok and successes >= timing.success_threshold and not state.ready:
                    state.ready = True
                    self.mark()
                elif not ok and failures >= timing.failure_threshold and state.ready:
                    state.ready = False
                    self.mark()
            if kind in ("startup", "liveness") and failures >= timing.failure_threshold:
                log.info("%s probe of %s/%s failed: restarting", kind, self.name, state.name)
                await self._stop_process(running, self._grace())
                return False
            await asyncio.sleep(timing.period)

    # -- termination --

    def _grace(self) -> float:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(grace)

    async def _stop_process(self, running: Running, grace: float) -> None:
        await running.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(running.wait()), grace)
        except TimeoutError:
            await running.kill()

    async def _stop_containers(self, states: list[ContainerState], grace: float) -> None:
        for state in states:
            state.held = True
        running = [s.running for s in states if s.running is not None]
        await asyncio.gather(*(self._stop_process(r, grace) for r in running))
        tasks = [s.task for s in states if s.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def terminate(self, grace: float) -> None:
        """Graceful stop: app containers (SIGTERM, SIGKILL after ``grace``), then sidecars in
        reverse order with what is left of it (at least 2 s, as the kubelet gives them)."""
        if self.terminating:
            return
        self.terminating = True
        self._stop.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self._stop_containers(self.containers, grace)
        for state in reversed([s for s in self.init_containers if s.sidecar]):
            await self._stop_containers([state], max(deadline - loop.time(), 2.0))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.main is not None:
            self.main.cancel()
            await asyncio.gather(self.main, return_exceptions=True)
        self.finished = True
        self.mark()

    async def kill(self) -> None:
        """Stop at once (the pod is gone from the API, or the agent stops). A graceful stop
        already under way is cut short: the agent cancels it when it stops, and its sidecars
        (stopped last) would outlive the agent."""
        if not self.terminating:
            await self.terminate(0.0)
            return
        states = self.all_containers()
        for state in states:
            state.held = True
        running = [s.running for s in states if s.running is not None]
        await asyncio.gather(*(r.kill() for r in running), return_exceptions=True)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
            await asyncio.gather(self.writer, return_exceptions=True)
        self.agent.ips.release(self.ip)
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- status --

    def _condition(self, kind: str, ok: bool) -> dict[str, Any]:
        status = "True" if ok else "False"
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != status:
            self._transitions[kind] = (status, _now())
        return {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[kind][1],
        }

    def phase(self) -> str:
        if not self.initialized:
            return "Pending"
        stopped = all(s.terminated is not None and s.running is None for s in self.containers)
        ends = self.terminating or self.pod["spec"].get("restartPolicy", "Always") != "Always"
        if stopped and ends:
            codes = [int(s.terminated["exitCode"]) for s in self.containers if s.terminated]
            return "Succeeded" if all(c == 0 for c in codes) else "Failed"
        return "Running"

    def status(self) -> dict[str, Any]:
        sidecars = [s for s in self.init_containers if s.sidecar]
        containers_ready = self.initialized and all(s.ready for s in [*self.containers, *sidecars])
        conditions = [
            self._condition("PodReadyToStartContainers", not self.finished),
            self._condition("Initialized", self.initialized),
            self._condition("Ready", containers_ready),
            self._condition("ContainersReady", containers_ready),
            self._condition("PodScheduled", True),
        ]
        status: dict[str, Any] = {
            "phase": self.phase(),
            "conditions": conditions,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "containerStatuses": [s.status() for s in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [s.status() for s in self.init_containers]
        return status

    async def _write_status(self) -> None:
        """Coalesce changes into status writes (a burst of changes is one PATCH)."""
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.agent.api.merge_patch(path, {"status": self.status()})
            except ApiError as exc:
                if exc.status == 404:
                    return
                log.warning("status of %s/%s: %s", self.namespace, self.name, exc)
                await asyncio.sleep(0.5)
                self._dirty.set()

    async def flush_status(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        with contextlib.suppress(ApiError):
            await self.agent.api.merge_patch(path, {"status": self.status()})


# --- the agent --------------------------------------------------------------------------------


class _ApiObjects:
    """ConfigMaps, Secrets and tokens for ``podspec``, from the API."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    async def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self.api.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        return dict(found) if found is not None else None

    async def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self.api.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return dict(found) if found is not None else None

    async def service_account_token(
        self, pod: Mapping[str, Any], audience: str | None, expiration_seconds: int
    ) -> str:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": max(expiration_seconds, 600),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        try:
            reply = await self.api.create(path, request)
        except ApiError as exc:
            raise ResolveError(f"token for {account}: {exc}") from exc
        return str(reply["status"]["token"])


class NodeAgent:
    """The kubelet of one Node (see the module docstring). ``run()`` until cancelled."""

    def __init__(self, api: KubeApi, options: AgentOptions) -> None:
        self.api = api
        self.options = options
        self.objects = _ApiObjects(api)
        self.ips = IpBlock()
        self._own_root = options.root is None
        self.root = options.root or Path(tempfile.mkdtemp(prefix="grpcmesh-node-agent-"))
        self.pods: dict[str, PodWorker] = {}
        """By pod uid."""
        self.registered = asyncio.Event()
        self._background_tasks: set[asyncio.Task[None]] = set()
        self.dns = DnsServer(options.hosts, self.resolve_service)

    @property
    def node_name(self) -> str:
        return self.options.node_name

    def base_env(self, worker: PodWorker) -> dict[str, str]:
        """What the kubelet adds to every container: the API server, and the pod's hostname."""
        api = urlsplit(self.api.server)
        port = str(api.port or 443)
        return {
            "KUBERNETES_SERVICE_HOST": api.hostname or HOST_IP,
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "HOSTNAME": worker.name,
        }

    def find(self, namespace: str, name: str) -> PodWorker:
        for worker in self.pods.values():
            if (worker.namespace, worker.name) == (namespace, name) and not worker.finished:
                return worker
        raise KeyError(f"pod {namespace}/{name} does not run on node {self.node_name}")

    async def resolve_service(self, name: str) -> list[str] | None:
        """``<svc>.<ns>.svc[.<cluster domain>]`` -> the Service's ready endpoint addresses
        (None, i.e. NXDOMAIN, for any other name or a Service that does not exist)."""
        suffix = f".svc.{self.options.cluster_domain}"
        base = name[: -len(suffix)] if name.endswith(suffix) else name.removesuffix(".svc")
        if base == name or base.count(".") != 1:
            return None
        service, namespace = base.split(".")
        if await self.api.get_or_none(f"/api/v1/namespaces/{namespace}/services/{service}") is None:
            return None
        slices = await self.api.get(
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            {"labelSelector": f"kubernetes.io/service-name={service}"},
        )
        return sorted(
            {
                address
                for item in slices["items"]
                for endpoint in item.get("endpoints") or []
                if (endpoint.get("conditions") or {}).get("ready") is not False
                for address in endpoint["addresses"]
            }
        )

    # -- the Node --

    def _node(self) -> dict[str, Any]:
        now = _now()
        conditions = [
            ("Ready", "True", "KubeletReady", "the grpcmesh test node agent is ready"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
            ("PIDPressure", "False", "KubeletHasSufficientPID", ""),
        ]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.grpcmesh.io/agent": "true",
                    **self.options.labels,
                },
            },
            "status": {
                "capacity": dict(self.options.capacity),
                "allocatable": dict(self.options.capacity),
                "conditions": [
                    {
                        "type": kind,
                        "status": status,
                        "reason": reason,
                        "message": message,
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                    for kind, status, reason, message in conditions
                ],
                "addresses": [
                    {"type": "InternalIP", "address": HOST_IP},
                    {"type": "Hostname", "address": self.node_name},
                ],
                "nodeInfo": {
                    "kubeletVersion": KUBELET_VERSION,
                    "containerRuntimeVersion": f"grpcmesh-node-agent://{self.options.runner.name}",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "osImage": "grpcmesh test node agent",
                    "kernelVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kubeProxyVersion": "",
                },
            },
        }

    async def _register(self) -> None:
        node = self._node()
        created = await self.api.get_or_none(f"/api/v1/nodes/{self.node_name}")
        if created is None:
            created = await self.api.create("/api/v1/nodes", node)
        # Status sent on create may be dropped; write it through the subresource as well.
        await self.api.merge_patch(
            f"/api/v1/nodes/{self.node_name}/status", {"status": node["status"]}
        )
        self._node_uid = str(created["metadata"]["uid"])
        await self._renew_lease()
        self.registered.set()

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        spec = {
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": int(self.options.heartbeat_seconds * 4),
            "renewTime": _micro_now(),
        }
        if await self.api.get_or_none(path) is None:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.node_name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": self.node_name,
                            "uid": self._node_uid,
                        }
                    ],
                },
                "spec": spec,
            }
            await self.api.create(path.rsplit("/", 1)[0], lease)
        else:
            await self.api.merge_patch(path, {"spec": spec})

    async def _heartbeat(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(self.options.heartbeat_seconds)
            try:
                await self._renew_lease()
                beats += 1
                if beats % 6 == 0:  # a status update now and then, as the kubelet does
                    await self.api.merge_patch(
                        f"/api/v1/nodes/{self.node_name}/status", {"status": self._node()["status"]}
                    )
            except (ApiError, OSError, aiohttp.ClientError) as exc:
                log.warning("heartbeat of %s: %s", self.node_name, exc)

    # -- pods --

    async def _pods(self) -> None:
        """List, then watch, the pods bound to this node; list again whenever the watch ends
        (410 Gone, or cut mid-stream by a restarting API server), as informers do."""
        while True:
            try:
                await self._list_and_watch()
            except ApiError as exc:
                if exc.status != 410 and exc.status < 500:
                    raise
            except (OSError, aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
                log.info("pod watch of %s ended: %s", self.node_name, exc)
                await asyncio.sleep(0.5)

    async def _list_and_watch(self) -> None:
        path = "/api/v1/pods"
        params = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        listing = await self.api.get(path, params)
        seen = set()
        for pod in listing["items"]:
            seen.add(pod["metadata"]["uid"])
            await self._on_pod("ADDED", pod)
        for uid in set(self.pods) - seen:
            await self._on_pod("DELETED", self.pods[uid].pod)
        version = str(listing["metadata"]["resourceVersion"])
        async for event in self.api.watch(path, params, version):
            if event["type"] != "BOOKMARK":
                await self._on_pod(str(event["type"]), event["object"])

    async def _on_pod(self, kind: str, pod: Mapping[str, Any]) -> None:
        uid = str(pod["metadata"]["uid"])
        worker = self.pods.get(uid)
        if kind == "DELETED":
            if worker is not None:
                self._background(self._forget(worker, graceful=False), f"forget {uid}")
            return
        if worker is None:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return
            worker = PodWorker(self, pod)
            self.pods[uid] = worker
            worker.start()
        else:
            worker.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not worker.terminating:
            self._background(self._forget(worker, graceful=True), f"delete {uid}")

    async def _forget(self, worker: PodWorker, *, graceful: bool) -> None:
        """Stop the pod's containers; after a graceful delete, remove it from the API."""
        if graceful:
            await worker.terminate(worker._grace())
            await worker.flush_status()
            body = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": worker.uid},
            }
            path = f"/api/v1/namespaces/{worker.namespace}/pods/{worker.name}"
            with contextlib.suppress(ApiError):
                await self.api.delete(path, body)
        else:
            await worker.kill()
        await worker.close()
        self.pods.pop(worker.uid, None)

    def _background(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    # -- run --

    async def run(self) -> None:
        """Register, then heartbeat and run pods until cancelled; then stop every pod's
        processes and delete the Node (its pods are the pod GC's to remove)."""
        try:
            await self.dns.start()
            await self._register()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._heartbeat())
                group.create_task(self._pods())
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for task in list(self._background_tasks):
            task.cancel()
        await asyncio.gather(*self._background_tasks, return_exceptions=True)
        workers = list(self.pods.values())
        await asyncio.gather(*(w.kill() for w in workers), return_exceptions=True)
        await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
        self.pods.clear()
        with contextlib.suppress(ApiError, OSError):
            await self.api.delete(f"/api/v1/nodes/{self.node_name}")
        await self.dns.stop()
        self.ips.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- what tests do to containers --

    async def stop_container(self, namespace: str, pod: str, container: str) -> None:
        """Stop one container's process (SIGKILL) and keep it down until ``start_container``:
        its probes stop, it is reported terminated and not ready."""
        worker = self.find(namespace, pod)
        state = worker.container(container)
        state.held = True
        if state.running is not None:
            await state.running.kill()
        if state.task is not None:
            await asyncio.gather(state.task, return_exceptions=True)

    async def start_container(self, namespace: str, pod: str, container: str) -> None:
        """Start a container ``stop_container`` stopped (a restart: restartCount + 1)."""
        worker = self.find(namespace, pod)
        state = worker.container(container)
        if not state.held:
            return
        state.held = False
        if state.terminated is not None:
            state.last_terminated = state.terminated
            state.restart_count += 1
        state.task = worker._spawn(worker._supervise(state), f"{pod}/{container}")


# --- from sync tests --------------------------------------------------------------------------


class AgentThread:
    """A ``NodeAgent`` on an event loop of its own, in a daemon thread, for sync tests.

    ``start()`` returns once the Node is registered; ``stop()`` stops every container and
    deletes the Node. The other methods run on the agent's loop and return its answer.
    """

    def __init__(self, kubeconfig: Path, options: AgentOptions) -> None:
        self.kubeconfig = kubeconfig
        self.options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._main: asyncio.Task[None] | None = None
        self._done = threading.Event()
        self.agent: NodeAgent | None = None

    @property
    def node_name(self) -> str:
        return self.options.node_name

    def start(self, timeout: float = 30.0) -> AgentThread:
        self._thread.start()
        ready: Future[NodeAgent] = Future()

        async def main() -> None:
            try:
                async with KubeApi.from_kubeconfig(self.kubeconfig) as api:
                    agent = NodeAgent(api, self.options)
                    self.agent = agent
                    runner = asyncio.create_task(agent.run())
                    registered = asyncio.create_task(agent.registered.wait())
                    try:
                        await asyncio.wait(
                            {runner, registered}, return_when=asyncio.FIRST_COMPLETED
                        )
                        if runner.done():
                            error = runner.exception() or RuntimeError("the agent ended")
                            ready.set_exception(error)
                            return
                        ready.set_result(agent)
                        await runner
                    finally:
                        registered.cancel()
                        runner.cancel()
                        await asyncio.gather(runner, return_exceptions=True)
            finally:
                self._done.set()

        def begin() -> None:
            self._main = self._loop.create_task(main())

        self._loop.call_soon_threadsafe(begin)
        try:
            ready.result(timeout)
        except BaseException:
            self.stop()  # registration failed: nothing may outlive the failed start
            raise
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every container, delete the Node, end the thread."""
        if self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)
            self._done.wait(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _agent(self) -> NodeAgent:
        assert self.agent is not None, "start() the agent first"
        return self.agent

    def stop_container(self, namespace: str, pod: str, container: str) -> None:
        self._call(self._agent().stop_container(namespace, pod, container))

    def start_container(self, namespace: str, pod: str, container: str) -> None:
        self._call(self._agent().start_container(namespace, pod, container))

    def pod_ip(self, namespace: str, pod: str) -> str:
        async def find() -> str:
            return self._agent().find(namespace, pod).ip

        return self._call(find())

    def log(self, namespace: str, pod: str, container: str) -> str:
        """What the container wrote to stdout/stderr so far (all its starts)."""

        async def read() -> str:
            worker = self._agent().find(namespace, pod)
            path = worker.folder / "logs" / f"{container}.log"
            return path.read_text(errors="replace") if path.exists() else ""

        return self._call(read())

    def run(self, function: Callable[[NodeAgent], Awaitable[T]], timeout: float = 60.0) -> T:
        """Run ``function(agent)`` on the agent's loop (for anything not wrapped here)."""

        async def call() -> T:
            return await function(self._agent())

        return self._call(call(), timeout)
