"""Run services as local processes on 127.0.0.1: start, wait for SERVING, stop cleanly.

A development harness, not an orchestrator. Each service gets port 0 and reports its bound ports
through ``GRPCMESH_PORTS_FILE``; it is ready when the standard grpc.health.v1 service answers
SERVING. Services that call others get ``GRPCMESH_TARGETS`` naming the ones started before them.
Stopping sends SIGTERM to each process group (latest first), then SIGKILL after a bound. Children
run in their own session, so a terminal's Ctrl-C reaches only the launcher, which stops them in
order; if the launcher itself is killed, the kernel sends them SIGTERM (see ``_orphan_guard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

HOST = "127.0.0.1"
LOG_TAIL_LINES = 30
_GUARD = Path(__file__).with_name("_orphan_guard.py")


@dataclass(frozen=True)
class ServiceSpec:
    """One service to run. ``config`` is written to a YAML file passed as GRPCMESH_CONFIG_FILE."""

    name: str
    command: Sequence[str]
    config: Mapping[str, Any] = field(default_factory=dict)
    targets: Sequence[str] = ()
    """Names of services started earlier that this one calls."""
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def python_module(
        cls,
        name: str,
        module: str,
        *,
        config: Mapping[str, Any] | None = None,
        targets: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> ServiceSpec:
        """A service run as ``python -m module`` with this interpreter."""
        return cls(name, (sys.executable, "-m", module), config or {}, tuple(targets), env or {})


@dataclass(frozen=True)
class RunningService:
    name: str
    pid: int
    grpc_address: str
    metrics_address: str
    log_path: Path


class StartupError(Exception):
    """A service did not become SERVING; the message names it and shows its log's last lines."""

    def __init__(self, service: str, reason: str, log_path: Path) -> None:
        self.service = service
        self.reason = reason
        self.log_path = log_path
        tail = log_tail(log_path)
        super().__init__(
            f"service {service!r} did not start: {reason}\n"
            f"--- last {LOG_TAIL_LINES} lines of {log_path} ---\n{tail}"
        )


class _NotReady(Exception):
    """Not serving yet; poll again."""


class _Exited(Exception):
    """The process ended while starting; polling again cannot help."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class _Proc:
    spec: ServiceSpec
    process: asyncio.subprocess.Process
    log_path: Path


class LocalRun:
    """Processes started with ``start`` and stopped, all of them, by ``stop`` or on exit."""

    def __init__(
        self,
        workdir: Path,
        *,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        poll_interval_s: float = 0.1,
    ) -> None:
        self.workdir = workdir
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.poll_interval_s = poll_interval_s
        self._procs: list[_Proc] = []
        self._running: dict[str, RunningService] = {}

    @property
    def services(self) -> Mapping[str, RunningService]:
        """The services that became SERVING, in start order."""
        return dict(self._running)

    async def __aenter__(self) -> LocalRun:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _env(self, spec: ServiceSpec, ports_file: Path) -> dict[str, str]:
        missing = [t for t in spec.targets if t not in self._running]
        if missing:
            raise ValueError(f"{spec.name}: targets not started yet: {', '.join(missing)}")
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",  # the log tail on failure must show the last words
            "GRPCMESH_HOST": HOST,
            "GRPCMESH_PORT": "0",
            "GRPCMESH_METRICS_HOST": HOST,
            "GRPCMESH_METRICS_PORT": "0",
            "GRPCMESH_PORTS_FILE": str(ports_file),
            "GRPCMESH_DB_PATH": str(self.workdir / f"{spec.name}.db"),
            "GRPCMESH_TARGETS": json.dumps(
                {t: self._running[t].grpc_address for t in spec.targets}
            ),
        }
        if spec.config:
            config_file = self.workdir / f"{spec.name}.yaml"
            config_file.write_text(yaml.safe_dump(dict(spec.config), sort_keys=True))
            env["GRPCMESH_CONFIG_FILE"] = str(config_file)
        env.update(spec.env)
        return env

    async def start(self, spec: ServiceSpec) -> RunningService:
        """Start ``spec`` and wait until it is SERVING; ``StartupError`` (process killed) if not."""
        if spec.name in {p.spec.name for p in self._procs}:
            raise ValueError(f"{spec.name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports_file = self.workdir / f"{spec.name}.ports.json"
        ports_file.unlink(missing_ok=True)  # a stale file from an earlier run would lie
        log_path = self.workdir / f"{spec.name}.log"
        env = self._env(spec, ports_file)
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-S",
                str(_GUARD),
                str(os.getpid()),
                *spec.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        proc = _Proc(spec, process, log_path)
        self._procs.append(proc)  # tracked before it is ready, so stop() covers a failed start
        try:
            ports = await self._wait_serving(proc, ports_file)
        except (_NotReady, _Exited) as exc:
            await self._stop_procs([proc])
            self._procs.remove(proc)
            raise StartupError(spec.name, str(exc), log_path) from None
        running = RunningService(
            name=spec.name,
            pid=process.pid,
            grpc_address=f"{HOST}:{ports['grpc']}",
            metrics_address=f"{HOST}:{ports['metrics']}",
            log_path=log_path,
        )
        self._running[spec.name] = running
        return running

    async def start_all(self, specs: Sequence[ServiceSpec]) -> list[RunningService]:
        """Start each spec as soon as its targets serve; independent ones start together.

        Raises the first ``StartupError`` (the others still starting are stopped with it).
        """
        pending = list(specs)
        while pending:
            wave = [s for s in pending if all(t in self._running for t in s.targets)]
            if not wave:
                names = ", ".join(s.name for s in pending)
                raise ValueError(f"targets that are neither running nor listed: {names}")
            pending = [s for s in pending if s not in wave]
            try:
                async with asyncio.TaskGroup() as group:
                    for spec in wave:
                        group.create_task(self.start(spec))
            except* StartupError as failed:
                raise failed.exceptions[0] from None
        return [self._running[s.name] for s in specs]

    async def _wait_serving(self, proc: _Proc, ports_file: Path) -> dict[str, int]:
        channel: grpc.aio.Channel | None = None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self.startup_timeout_s),
                wait=wait_fixed(self.poll_interval_s),
                retry=retry_if_exception_type(_NotReady),
                reraise=True,
            ):
                with attempt:
                    if proc.process.returncode is not None:
                        raise _Exited(f"exited with code {proc.process.returncode}")
                    ports = _read_ports(ports_file)
                    if channel is None:
                        channel = grpc.aio.insecure_channel(f"{HOST}:{ports['grpc']}")
                    await _check_serving(channel)
            return ports
        except _NotReady as exc:
            raise _NotReady(
                f"not SERVING within {self.startup_timeout_s:g}s (last: {exc})"
            ) from None
        finally:
            if channel is not None:
                await channel.close()

    async def stop(self) -> dict[str, int]:
        """Stop every process this run started; returns exit codes by service name."""
        procs, self._procs = self._procs, []
        self._running.clear()
        await self._stop_procs(procs)
        return {
            p.spec.name: p.process.returncode for p in procs if p.process.returncode is not None
        }

    async def _stop_procs(self, procs: Sequence[_Proc]) -> None:
        for proc in reversed(procs):  # dependents were started last: stop them first
            _signal_group(proc.process, signal.SIGTERM)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.stop_timeout_s
            for proc in reversed(procs):
                try:
                    await asyncio.wait_for(proc.process.wait(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    _signal_group(proc.process, signal.SIGKILL)
                    await proc.process.wait()
        except BaseException:
            # Cancelled (a second Ctrl-C) or worse: do not leave anything running behind us.
            for proc in procs:
                _signal_group(proc.process, signal.SIGKILL)
            raise


def _signal_group(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if process.returncode is not None:
        return
    # Each child leads its own process group (start_new_session), so this also reaches anything
    # it spawned.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _read_ports(ports_file: Path) -> dict[str, int]:
    try:
        data = json.loads(ports_file.read_text())
        return {"grpc": int(data["grpc"]), "metrics": int(data["metrics"])}
    except FileNotFoundError:
        raise _NotReady("no ports file yet") from None
    except (ValueError, KeyError, TypeError) as exc:  # half-written, or not ours
        raise _NotReady(f"unreadable ports file: {exc!r}") from None


async def _check_serving(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    except grpc.aio.AioRpcError as exc:
        raise _NotReady(f"health check: {exc.code().name}") from None
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        raise _NotReady(f"health status {status}")
