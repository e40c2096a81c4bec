"""End-to-end harness: a real ``grpcmesh up`` (control plane, Envoys, services as processes on
127.0.0.1), the ``grpcmesh`` CLI, and readers for what the tests assert on: Envoy's /stats,
the apps' /metrics, ``status --json``. Every wait is a bounded poll."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml

from grpcmesh_control.local.launcher import read_state
from grpcmesh_control.local.state import ReplicaState, RunState

REPO = Path(__file__).resolve().parents[2]
RESOURCES = Path(__file__).with_name("resources")
GRPCMESH = str(Path(sys.executable).with_name("grpcmesh"))

T = TypeVar("T")


def grpcmesh(
    *args: str, timeout: float = 120.0, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would (a new process), from the repository root; its output is
    piped, so it is the plain, unwrapped kind. The bound is generous: a command is ~1.3 s of
    CPU, mostly imports, and a 2-core machine shared by several test runs stretches that."""
    return subprocess.run(
        [GRPCMESH, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
    )


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float, what: str, every: float = 0.2
) -> T:
    """The first non-None, truthy result of ``probe`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r})")


def processes_using(run_dir: Path) -> list[psutil.Process]:
    """Live processes started for ``run_dir``: it is in their command line (control plane,
    Envoys) or their working directory (apps). The orphan check."""
    needle = str(run_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if needle in " ".join(info["cmdline"] or ()) or (info["cwd"] or "").startswith(needle):
            found.append(proc)
    return found


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def app_processes(replica: ReplicaState) -> list[int]:
    """The pids of ``replica``'s app, the one the launcher started first: with ``workers`` > 1
    it supervises that many worker processes, which serve the calls (its children)."""
    assert replica.app_pid is not None
    try:
        children = psutil.Process(replica.app_pid).children()
    except psutil.NoSuchProcess:
        return []
    return [replica.app_pid, *(child.pid for child in children)]


WORKERS_ENV = "GRPCMESH_E2E_WORKERS"


def _with_workers(resources: Sequence[Path], out: Path, workers: int) -> Path:
    """``resources`` copied to the folder ``out`` with ``spec.workload.workers: workers``."""
    out.mkdir(parents=True, exist_ok=True)
    files = [f for p in resources for f in (sorted(p.glob("*.yaml")) if p.is_dir() else [p])]
    for path in files:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for doc in docs:
            workload = doc.get("spec", {}).get("workload")
            if workload is not None:
                workload["workers"] = workers
        (out / path.name).write_text(yaml.safe_dump_all(docs))
    return out


class Mesh:
    """A ``grpcmesh up`` launcher in its own session, and the run directory it owns."""

    def __init__(
        self,
        run_dir: Path,
        resources: Path | Sequence[Path] = RESOURCES,
        *,
        prometheus: bool = False,
        up_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        workers: int | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.workers = int(os.environ.get(WORKERS_ENV, "1")) if workers is None else workers
        """Processes per replica (``spec.workload.workers``); ``GRPCMESH_E2E_WORKERS`` sets it
        for every mesh a test starts without saying, so the whole suite can run with 2."""
        given = (resources,) if isinstance(resources, Path) else tuple(resources)
        self.resources = (
            given
            if self.workers == 1
            else (_with_workers(given, run_dir.parent / f"{run_dir.name}-resources", self.workers),)
        )
        """What ``--resources`` gives: files and folders of MeshServices."""
        self.prometheus = prometheus
        self.up_args = tuple(up_args)
        """More ``grpcmesh up`` options (``--otlp-endpoint``, say)."""
        self.env = dict(env or {})
        """Variables set for ``grpcmesh up`` and what it starts (``GRPCMESH_*`` settings)."""
        self.log = run_dir.parent / f"{run_dir.name}-launcher.log"
        self.launcher: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> RunState:
        with self.log.open("wb") as out:
            self.launcher = subprocess.Popen(
                [
                    GRPCMESH,
                    "up",
                    "-v",
                    "--state-dir",
                    str(self.run_dir),
                    *(arg for path in self.resources for arg in ("--resources", str(path))),
                    *(["--prometheus"] if self.prometheus else []),
                    *self.up_args,
                ],
                cwd=REPO,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.launcher.poll() is not None:
                raise AssertionError(f"grpcmesh up exited: {self.log.read_text()[-3000:]}")
            state = read_state(self.run_dir)
            if state is not None and state.serving:
                assert all(r.ready for r in state.replicas), state
                return state
            time.sleep(0.2)
        raise AssertionError(f"mesh not ready in {timeout:g}s: {self.log.read_text()[-3000:]}")

    @property
    def state(self) -> RunState:
        state = read_state(self.run_dir)
        assert state is not None, "the mesh is not running"
        return state

    def replica(self, key: str) -> ReplicaState:
        service, _, replica = key.partition("/")
        return next(r for r in self.state.replicas if (r.service, r.replica) == (service, replica))

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the launcher as Ctrl-C would; its exit code. Fails if anything survives."""
        assert self.launcher is not None
        if self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
        try:
            code = self.launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            raise
        finally:
            leftovers = processes_using(self.run_dir)
            kill_all(leftovers)
        assert not leftovers, f"processes left running: {[p.info for p in leftovers]}"
        return code

    # --- faults ------------------------------------------------------------------------

    def set_config(self, key: str, **values: object) -> None:
        """Change a replica's live config (the kit re-reads the file within a second)."""
        path = Path(self.replica(key).config_file)
        config = yaml.safe_load(path.read_text()) or {}
        config.update({k: str(v) for k, v in values.items()})
        tmp = path.with_name(".config.yaml.tmp")
        tmp.write_text(yaml.safe_dump(config))
        tmp.replace(path)

    def payments_replicas(self) -> Iterator[ReplicaState]:
        return (r for r in self.state.replicas if r.service == "payments")

    # --- the CLI -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        result = grpcmesh("status", "--json", "--state-dir", str(self.run_dir))
        assert result.returncode == 0, result.stderr
        doc: dict[str, Any] = json.loads(result.stdout)
        return doc

    def apply(self, path: Path) -> subprocess.CompletedProcess[str]:
        # apply waits (up to its --wait, 90 s) for the replicas it starts to be ready.
        if self.workers == 1 or not path.is_file():
            return grpcmesh("apply", "-f", str(path), "--state-dir", str(self.run_dir), timeout=150)
        # What is applied keeps the mesh's workers; the output names the file as given.
        copy = _with_workers(
            [path], self.run_dir.parent / f"{self.run_dir.name}-apply", self.workers
        )
        copy /= path.name
        result = grpcmesh("apply", "-f", str(copy), "--state-dir", str(self.run_dir), timeout=150)
        result.stdout = result.stdout.replace(str(copy), str(path))
        result.stderr = result.stderr.replace(str(copy), str(path))
        return result

    def resource_files(self) -> dict[str, bytes]:
        directory = self.run_dir / "resources"
        return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml"))}


def proxies(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every proxy of a ``status --json`` document by node id (sidecars and the gateway)."""
    out = {e["node_id"]: e for s in status["services"] for e in s["endpoints"]}
    out[status["gateway"]["node_id"]] = status["gateway"]
    return out


def converged(status: dict[str, Any]) -> bool:
    """Every proxy connected and holding (ACKed) its current snapshot, without a NACK."""
    return all(
        p["connected"]
        and p["acked_version"] is not None
        and p["acked_version"] == p["snapshot_version"]
        and p["nack_error"] is None
        for p in proxies(status).values()
    )


# --- invalid resources ------------------------------------------------------------------

Edit = Callable[[dict[str, Any]], None]
INVALID: dict[str, tuple[str, Edit, str]] = {
    # case: (file, how to break it, the field the refusal must name)
    "schema": ("catalog.yaml", lambda doc: doc["spec"].update(replicas=-1), "spec.replicas"),
    "unknown-backend": (
        "orders.yaml",
        lambda doc: doc["spec"]["backends"].append({"name": "shipping"}),
        "spec.backends[3].name",
    ),
    "weights": (
        "payments.yaml",
        lambda doc: doc["spec"]["versions"][1].update(weight=5),
        "spec.versions",
    ),
    "typo": (
        "orders.yaml",
        lambda doc: doc["spec"].update(expsoe=True),
        "spec.expsoe: unknown field (did you mean expose?)",
    ),
}


def invalid_resource(case: str, directory: Path) -> tuple[Path, str]:
    """One of the test resources broken as ``INVALID[case]`` says, written to ``directory``
    under its own name; returns the file and the field an error must name."""
    name, edit, field = INVALID[case]
    doc = yaml.safe_load((RESOURCES / name).read_text())
    edit(doc)
    path = directory / name
    path.write_text(yaml.safe_dump(doc))
    return path, field


# --- what Envoy and the apps count ---------------------------------------------------------


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


async def envoy_stats(admin: str, contains: str = "") -> dict[str, int]:
    """Envoy's counters and gauges (``/stats``), optionally only names containing a string."""
    text = await asyncio.to_thread(_get, f"http://{admin}/stats")
    stats = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and contains in name and value.strip().isdigit():
            stats[name] = int(value)
    return stats


async def config_reloads(metrics: str) -> float:
    """How many times the app took new settings from its config file (the kit counts them)."""
    from tests.scrape import scrape, value

    return value(await scrape(metrics), "grpcmesh_config_reloads_total")


async def reloaded(metrics: Sequence[str], before: Sequence[float], workers: int = 1) -> None:
    """Wait (bounded) until every app counted one more config reload than ``before`` in each
    of its ``workers`` (an app's /metrics sums its workers' counts)."""

    async def done() -> bool | None:
        now = [await config_reloads(m) for m in metrics]
        return all(n >= b + workers for n, b in zip(now, before, strict=True)) or None

    await eventually(done, timeout=15, what="the apps reloaded their config")


async def handled(metrics: str, method: str, code: str | None = None) -> float:
    """The app's ``grpc_server_handled_total`` for ``method`` (any service), by code or all."""
    from tests.scrape import scrape, value

    labels = {"grpc_method": method} | ({"grpc_code": code} if code else {})
    return value(await scrape(metrics), "grpc_server_handled_total", **labels)
