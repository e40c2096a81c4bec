"""xDS convergence: time from a mesh change to every subscribed Envoy ACKing it, by mesh size.

For each size (100 and 1000 MeshServices by default) the real ``ControlPlane`` runs in a process
of its own (so its RSS is its own), on an empty run directory; the mesh is generated in memory
and handed to its publisher, as the file watcher or the operator would. Each service has two
versions (90/10), two endpoints per version, and two backends: the hub ``svc-0000`` and the next
service. A few real Envoys (``--sidecars``, sidecars of svc-0001, svc-0002, ...) subscribe over
ADS, bootstrapped with ``render_bootstrap``.

Every change touches the hub, so it changes every sidecar's snapshot: even changes shift the
hub's canary weight (RDS), odd ones add or remove an endpoint of hub v1 (EDS). Two phases:

- **end to end**: ``publisher.update`` (the debounce window of 50 ms, the rebuild, the pushes,
  the ACKs) until every sidecar has ACKed the new snapshot, one change at a time;
- **rebuild**: ``publisher.rebuild()`` called directly after the update, timing the rebuild
  itself (``RebuildOutcome.duration``) and, apart, the push-to-ACK time after it.

ACKs are timestamped by a listener on the control plane's cache (no polling): a node has
converged when its ``acked_snapshot`` is the version the cache now holds for it.

    python -m bench.xds_convergence [--sizes 100,1000] [--changes 100] [--rebuilds 20]

``--scale 1000x2000,5000x10000`` measures how it scales with proxies instead: that many
``DeltaSidecar`` ADS clients (stand-ins that subscribe and ACK as Envoy does) over that many
services, and per change target (a leaf one service routes to, the hub every one does) the
time from the change until every client it altered has ACKed, the rebuild CPU, the number of
snapshot groups built, and the control plane's RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import psutil
import typer
from rich.console import Console
from rich.table import Table

from bench._mesh import (
    DeltaSidecar,
    free_port,
    load_average,
    print_header,
    rss_mb,
    running_envoys,
    stop_processes,
)
from grpcmesh_control.local.controlplane import (
    BoundAddresses,
    ControlPlane,
    ControlPlaneSettings,
)
from grpcmesh_control.mesh.model import Backend, Endpoint, GrpcSpec, MeshService, VersionTarget
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_control.mesh.translate.bootstrap import render_bootstrap
from grpcmesh_control.mesh.xds import NodeStatus, SnapshotCache
from grpcmesh_loadgen.stats import percentile

REPO = Path(__file__).resolve().parents[1]
HUB = "svc-0000"
CHANGE_TIMEOUT = 10.0
# Goals from the mesh issue.
GOAL_P99_MS = 250.0
GOAL_RSS_MB = 300.0

app = typer.Typer(add_completion=False)


def _name(i: int) -> str:
    return f"svc-{i:04d}"


def _sidecar_ids(sidecars: int) -> list[str]:
    return [str(NodeId.sidecar(_name(i), "0")) for i in range(1, sidecars + 1)]


class SyntheticMesh:
    """``size`` MeshServices and their endpoints; ``change(i)`` alters the hub in place."""

    def __init__(self, size: int) -> None:
        self.services = {
            _name(i): MeshService(
                _name(i),
                "bench",
                GrpcSpec(50051, (f"bench.v1.Service{i:04d}",)),
                versions=(VersionTarget("v1", 90), VersionTarget("v2", 10)),
                backends=tuple(
                    Backend(b) for b in sorted({HUB, _name((i + 1) % size)} - {_name(i)})
                ),
            )
            for i in range(size)
        }
        self.endpoints = {
            _name(i): [
                Endpoint(f"10.{i // 250}.{i % 250}.{4 * v + r + 1}", 15006, version)
                for v, version in enumerate(("v1", "v2"))
                for r in range(2)
            ]
            for i in range(size)
        }
        self._extra = Endpoint("10.255.0.1", 15006, "v1")

    def change(self, i: int, target: str = HUB) -> str:
        """Alter ``target`` (the hub unless told): even ``i`` shift its canary weight (RDS of
        its callers), odd ones add or remove an endpoint of its v1 (EDS)."""
        svc = self.services[target]
        if i % 2 == 0:
            # Consecutive values differ, so every change is a real change.
            canary = 10 + 10 * ((i // 2 + 1) % 5)
            versions = (VersionTarget("v1", 100 - canary), VersionTarget("v2", canary))
            self.services[target] = dataclasses.replace(svc, versions=versions)
            return "weight"
        if self._extra in self.endpoints[target]:
            self.endpoints[target].remove(self._extra)
            return "endpoint-"
        self.endpoints[target].append(self._extra)
        return "endpoint+"

    def inputs(self) -> tuple[list[MeshService], dict[str, list[Endpoint]]]:
        return list(self.services.values()), {k: list(v) for k, v in self.endpoints.items()}


class AckWatch:
    """Cache listener: the time every watched node has ACKed its current snapshot, after a
    change that moved each of them off ``before``."""

    def __init__(self, cache: SnapshotCache, nodes: list[str]) -> None:
        self._cache = cache
        self._nodes = nodes
        self._before: dict[str, str | None] = {}
        self._pending: set[str] = set()
        self._done = asyncio.Event()
        self.done_at = 0.0
        cache.subscribe(self._on_status)

    def current(self, node_id: str) -> str | None:
        snapshot = self._cache.node_snapshot(node_id)
        return None if snapshot is None else snapshot.version

    def converged(self, node_id: str) -> bool:
        version = self.current(node_id)
        acked = self._cache.node(node_id).acked_snapshot
        return version is not None and acked == version and version != self._before[node_id]

    def arm(self) -> None:
        """Call just before the change."""
        self._before = {n: self.current(n) for n in self._nodes}
        self._pending = set(self._nodes)
        self._done.clear()

    def _on_status(self, status: NodeStatus) -> None:
        if status.node_id in self._pending and self.converged(status.node_id):
            self._pending.discard(status.node_id)
            if not self._pending:
                self.done_at = time.perf_counter()
                self._done.set()

    async def wait(self) -> float:
        """``done_at``, or NaN if not every node converged within ``CHANGE_TIMEOUT``."""
        try:
            await asyncio.wait_for(self._done.wait(), CHANGE_TIMEOUT)
        except TimeoutError:
            return math.nan
        return self.done_at


def _write_atomic(path: Path, value: Any) -> None:
    """The benchmark polls for ``path``: it must never see it half written."""
    part = path.with_suffix(".part")
    part.write_text(json.dumps(value))
    part.replace(path)


def _rss() -> float:
    return psutil.Process().memory_info().rss / (1024 * 1024)


async def _control_plane(
    workdir: Path, size: int, nodes: list[str], changes: int, rebuilds: int
) -> None:
    """The control-plane process: serve, wait for the Envoys, apply the changes, report."""
    state = workdir / "state"
    state.mkdir()
    cp = ControlPlane(ControlPlaneSettings(state))
    bound: asyncio.Future[BoundAddresses] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(cp.run(on_ready=bound.set_result))
    waiting: set[asyncio.Future[Any]] = {serving, bound}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        serving.result()  # raises why it stopped
    mesh = SyntheticMesh(size)
    cp.publisher.update(*mesh.inputs())
    initial = cp.publisher.rebuild()  # no node yet: registry and version hash only
    report: dict[str, Any] = {"rss_idle_mb": _rss(), "initial_rebuild_s": initial.duration}
    _write_atomic(workdir / "xds.json", {"xds": bound.result().xds_address})

    watch = AckWatch(cp.cache, nodes)
    deadline = time.monotonic() + 60
    while not all(cp.cache.node(n).acked_snapshot == watch.current(n) for n in nodes):
        if time.monotonic() > deadline:
            raise TimeoutError("the Envoys did not ACK their first snapshot within 60 s")
        await asyncio.sleep(0.05)

    end_to_end: list[float] = []
    to_publish: list[float] = []  # update -> the first sidecar's new snapshot in the cache
    first = cp.cache.group_of(nodes[0])
    kinds: list[str] = []
    for i in range(changes):
        await asyncio.sleep(0.02)  # let the previous push's stray requests settle
        kinds.append(mesh.change(i))
        watch.arm()
        published = asyncio.create_task(_published(cp.cache, first))
        started = time.perf_counter()
        cp.publisher.update(*mesh.inputs())
        end_to_end.append(await watch.wait() - started)
        try:
            to_publish.append(await asyncio.wait_for(published, CHANGE_TIMEOUT) - started)
        except TimeoutError:  # never published: counted as a timeout by the end-to-end time
            to_publish.append(math.nan)

    rebuild: list[float] = []
    rebuild_cpu: list[float] = []
    push_ack: list[float] = []
    for i in range(changes, changes + rebuilds):
        await asyncio.sleep(0.02)
        mesh.change(i)
        watch.arm()
        cp.publisher.update(*mesh.inputs())
        cpu = time.thread_time()
        outcome = cp.publisher.rebuild()  # now, not after the debounce window
        built = time.perf_counter()
        rebuild.append(outcome.duration)
        # The work itself: on a loaded machine the wall time above includes waiting for a CPU.
        rebuild_cpu.append(time.thread_time() - cpu)
        push_ack.append(await watch.wait() - built)

    report |= {
        "end_to_end_s": end_to_end,
        "kinds": kinds,
        "publish_s": to_publish,
        "rebuild_s": rebuild,
        "rebuild_cpu_s": rebuild_cpu,
        "push_ack_s": push_ack,
        "rss_after_mb": _rss(),
        "snapshot_resources": {
            n: sum(len(t.resources) for t in snap.by_type.values())
            for n in nodes
            if (snap := cp.cache.node_snapshot(n)) is not None
        },
    }
    (workdir / ".report.json").write_text(json.dumps(report))
    (workdir / ".report.json").replace(workdir / "report.json")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()  # the parent reads our RSS, then stops us
    serving.cancel()


async def _published(cache: SnapshotCache, group: str) -> float:
    """When ``group``'s snapshot next changes (debounce and rebuild done, pushes starting)."""
    await cache.wait_for_change(group, cache.generation(group))
    return time.perf_counter()


def _sidecar_configs(xds: str, nodes: list[str]) -> dict[str, dict[str, Any]]:
    configs = {}
    for node_id in nodes:
        node = ProxyNode(
            NodeId.parse(node_id),
            inbound_port=free_port(),
            egress_port=free_port(),
            app_port=free_port(),
            bind_address="127.0.0.1",
        )
        configs[node.id.name] = render_bootstrap(
            node_id,
            node.id.envoy_cluster,
            xds,
            free_port(),
            node_metadata=node.metadata(),
            bind_address="127.0.0.1",
        )
    return configs


@dataclass(frozen=True)
class SizeResult:
    size: int
    report: Mapping[str, Any]
    rss_peak_mb: float
    load: str

    def ms(self, key: str, q: float, kind: str | None = None) -> float:
        samples = self.report[key]
        if kind is not None:
            samples = [v for v, k in zip(samples, self.report["kinds"], strict=True) if k == kind]
        values = sorted(v for v in samples if not math.isnan(v))
        return percentile(values, q) * 1000 if values else math.nan

    def timeouts(self) -> int:
        return sum(math.isnan(v) for v in self.report["end_to_end_s"] + self.report["push_ack_s"])


def _run_size(
    console: Console, size: int, sidecars: int, changes: int, rebuilds: int
) -> SizeResult:
    nodes = _sidecar_ids(sidecars)
    with tempfile.TemporaryDirectory(prefix="xds-convergence-") as tmp:
        workdir = Path(tmp)
        log = workdir / "control-plane.log"
        with log.open("wb") as out:
            command = [sys.executable, "-m", "bench.xds_convergence", "--serve", str(workdir)]
            command += ["--sizes", str(size), "--changes", str(changes)]
            command += ["--rebuilds", str(rebuilds), "--sidecars", str(sidecars)]
            cp = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            xds = _wait_file(workdir / "xds.json", cp, log, 120)["xds"]
            with running_envoys(_sidecar_configs(xds, nodes), workdir) as envoys:
                peak = 0.0
                deadline = time.monotonic() + 60 + changes * 2 * CHANGE_TIMEOUT
                report_file = workdir / "report.json"
                while not report_file.exists():
                    peak = max(peak, rss_mb(cp.pid)[0])
                    _check_alive(cp, log, deadline)
                    if any(e.process.poll() is not None for e in envoys.values()):
                        raise RuntimeError("an Envoy exited")
                    time.sleep(0.1)
                report = json.loads(report_file.read_text())
                peak = max(peak, rss_mb(cp.pid)[0])
        finally:
            stop_processes([cp])
    result = SizeResult(size, report, peak, load_average())
    console.print(
        f"  {size} services: end-to-end p50 {result.ms('end_to_end_s', 50):.0f} ms, "
        f"p99 {result.ms('end_to_end_s', 99):.0f} ms; rebuild p50 "
        f"{result.ms('rebuild_s', 50):.0f} ms; control plane RSS peak {peak:.0f} MB"
    )
    # Which kind of change is slow, if one is: RDS (weights) and EDS (endpoints) differ.
    for kind in sorted(set(report["kinds"])):
        console.print(
            f"    {kind:10} p50 {result.ms('end_to_end_s', 50, kind):.0f} ms, "
            f"p90 {result.ms('end_to_end_s', 90, kind):.0f} ms, "
            f"p99 {result.ms('end_to_end_s', 99, kind):.0f} ms"
        )
    over = sum(v > GOAL_P99_MS / 1000 for v in report["end_to_end_s"])
    console.print(f"    {over} of {changes} changes took over {GOAL_P99_MS:g} ms")
    return result


def _wait_file(path: Path, process: subprocess.Popen[bytes], log: Path, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not path.exists():
        _check_alive(process, log, deadline)
        time.sleep(0.05)
    return json.loads(path.read_text())


def _check_alive(process: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"the control plane exited:\n{log.read_text()[-3000:]}")
    if time.monotonic() > deadline:
        raise TimeoutError(f"the control plane did not finish in time:\n{log.read_text()[-3000:]}")


def _table(results: list[SizeResult], changes: int, rebuilds: int) -> Table:
    table = Table(title="xDS convergence (every subscribed Envoy ACKed)", title_justify="left")
    for column in ("services", "resources/sidecar"):
        table.add_column(column, justify="right")
    for column in ("end-to-end p50", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    for column in ("update→published p50", "rebuild p50", "p99", "rebuild CPU p50"):
        table.add_column(column, justify="right")
    for column in ("push→ACK p50", "p99"):
        table.add_column(column, justify="right")
    for column in ("CP RSS idle", "peak", "timeouts", "load avg"):
        table.add_column(column, justify="right")
    for r in results:
        resources = sorted(set(r.report["snapshot_resources"].values()))
        table.add_row(
            str(r.size),
            "/".join(map(str, resources)),
            f"{r.ms('end_to_end_s', 50):.0f} ms",
            f"{r.ms('end_to_end_s', 90):.0f} ms",
            f"{r.ms('end_to_end_s', 99):.0f} ms",
            f"{r.ms('end_to_end_s', 100):.0f} ms",
            f"{r.ms('publish_s', 50):.0f} ms",
            f"{r.ms('rebuild_s', 50):.1f} ms",
            f"{r.ms('rebuild_s', 99):.1f} ms",
            f"{r.ms('rebuild_cpu_s', 50):.1f} ms",
            f"{r.ms('push_ack_s', 50):.1f} ms",
            f"{r.ms('push_ack_s', 99):.1f} ms",
            f"{r.report['rss_idle_mb']:.0f} MB",
            f"{r.rss_peak_mb:.0f} MB",
            str(r.timeouts()),
            r.load,
        )
    table.caption = (
        f"{changes} end-to-end changes (update, 50 ms debounce, rebuild, push, ACK) and "
        f"{rebuilds} direct rebuilds per size"
    )
    return table


def _verdicts(console: Console, results: list[SizeResult]) -> None:
    largest = max(results, key=lambda r: r.size)
    p99 = largest.ms("end_to_end_s", 99)
    peak = max(r.rss_peak_mb for r in results)
    for what, measured, goal, ok in (
        (f"p99 at {largest.size} services", f"{p99:.0f} ms", f"<= {GOAL_P99_MS:g} ms", p99 <= 250),
        ("control plane RSS", f"{peak:.0f} MB", f"<= {GOAL_RSS_MB:g} MB", peak <= GOAL_RSS_MB),
    ):
        verdict = "[green]meets[/green]" if ok else "[red]MISSES[/red]"
        console.print(f"{what}: {measured} {verdict} the goal ({goal})")
    if any(r.timeouts() for r in results):
        console.print("[red]some changes never converged: see the timeouts column[/red]")


# --- many ADS clients: scaling with proxies ---------------------------------------------------

LEAF_OF = 2
"""The leaf changed is svc-(size // LEAF_OF): one caller (the service before it) routes to it."""


def _client_ids(services: int, clients: int) -> list[str]:
    """``clients`` sidecars spread over ``services``: replica r of svc-i is client r*services+i,
    so every service has clients // services replicas (some one more)."""
    return [str(NodeId.sidecar(_name(k % services), str(k // services))) for k in range(clients)]


class ChangeWatch:
    """Cache listener for many nodes: after a change, the nodes whose snapshot it changed, and
    when the last of them ACKed the new one. Nodes the change did not touch are not waited for
    (a leaf change reaches only its callers)."""

    def __init__(self, cache: SnapshotCache, nodes: list[str]) -> None:
        self._cache = cache
        self._nodes = nodes
        self._before: dict[str, str | None] = {}
        self._acked_at: dict[str, float] = {}
        self._progress = asyncio.Event()
        cache.subscribe(self._on_status)

    def current(self, node_id: str) -> str | None:
        snapshot = self._cache.node_snapshot(node_id)
        return None if snapshot is None else snapshot.version

    def all_acked(self) -> bool:
        return all(self._cache.node(n).acked_snapshot == self.current(n) for n in self._nodes)

    def arm(self) -> None:
        """Call just before the change."""
        self._before = {n: self.current(n) for n in self._nodes}
        self._acked_at = {}

    def _on_status(self, status: NodeStatus) -> None:
        node_id = status.node_id
        if node_id in self._acked_at or node_id not in self._before:
            return
        version = self.current(node_id)
        if version != self._before[node_id] and status.acked_snapshot == version:
            self._acked_at[node_id] = time.perf_counter()
            self._progress.set()

    async def wait(self) -> tuple[float, int]:
        """(when the last changed node ACKed, how many changed); call once the rebuild ran.
        NaN if they did not all ACK within ``CHANGE_TIMEOUT``."""
        changed = [n for n in self._nodes if self.current(n) != self._before[n]]
        deadline = time.monotonic() + CHANGE_TIMEOUT
        while not all(n in self._acked_at for n in changed):
            self._progress.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return math.nan, len(changed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)
        return max((self._acked_at[n] for n in changed), default=math.nan), len(changed)


async def _control_plane_clients(
    workdir: Path, services: int, clients: int, changes: int, rebuilds: int
) -> None:
    """The control-plane process of the many-clients mode: serve, wait for every client to ACK,
    then per target (a leaf, the hub) time changes end to end and direct rebuilds."""
    state = workdir / "state"
    state.mkdir()
    cp = ControlPlane(ControlPlaneSettings(state))
    bound: asyncio.Future[BoundAddresses] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(cp.run(on_ready=bound.set_result))
    waiting: set[asyncio.Future[Any]] = {serving, bound}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        serving.result()  # raises why it stopped
    mesh = SyntheticMesh(services)
    cp.publisher.update(*mesh.inputs())
    initial = cp.publisher.rebuild()
    report: dict[str, Any] = {"rss_idle_mb": _rss(), "initial_rebuild_s": initial.duration}
    nodes = _client_ids(services, clients)
    watch = ChangeWatch(cp.cache, nodes)
    connect_started = time.perf_counter()
    _write_atomic(workdir / "xds.json", {"xds": bound.result().xds_address})
    deadline = time.monotonic() + 300
    while not all(cp.cache.node(n).connected for n in nodes) or not watch.all_acked():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {clients} clients did not ACK their first snapshot in 300 s")
        await asyncio.sleep(0.1)
    report |= {
        "connect_all_acked_s": time.perf_counter() - connect_started,
        "rss_connected_mb": _rss(),
    }

    leaf = _name(services // LEAF_OF)
    for label, target in (("leaf", leaf), ("hub", HUB)):
        end_to_end: list[float] = []
        changed_nodes: list[int] = []
        for i in range(changes):
            await asyncio.sleep(0.02)  # let the previous push's stray requests settle
            mesh.change(i, target)
            watch.arm()
            started = time.perf_counter()
            cp.publisher.update(*mesh.inputs())
            await cp.publisher.wait_settled()
            acked, changed = await watch.wait()
            end_to_end.append(acked - started)
            changed_nodes.append(changed)
        rebuild: list[float] = []
        rebuild_cpu: list[float] = []
        built: list[int] = []
        for i in range(changes, changes + rebuilds):
            await asyncio.sleep(0.02)
            mesh.change(i, target)
            watch.arm()
            cp.publisher.update(*mesh.inputs())
            cpu = time.thread_time()
            outcome = cp.publisher.rebuild()
            rebuild_cpu.append(time.thread_time() - cpu)
            rebuild.append(outcome.duration)
            built.append(outcome.built)
            await watch.wait()
        report[label] = {
            "target": target,
            "end_to_end_s": end_to_end,
            "changed_nodes": changed_nodes,
            "rebuild_s": rebuild,
            "rebuild_cpu_s": rebuild_cpu,
            "built": built,
        }
    report["rss_after_mb"] = _rss()
    report["groups"] = len(cp.cache.groups())
    (workdir / ".report.json").write_text(json.dumps(report))
    (workdir / ".report.json").replace(workdir / "report.json")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    serving.cancel()


CLIENTS_PER_CHANNEL = 100
"""Streams per client connection (HTTP/2 stream limits; Envoys each have their own)."""
CONNECT_BATCH = 250
"""Clients started together; the next batch starts once each has its first response."""


async def _run_clients(
    xds: str, nodes: list[str], cp_pid: int, report_file: Path, deadline: float
) -> tuple[float, int]:
    """Connect one ``DeltaSidecar`` per node until the report appears; (CP RSS peak MB,
    responses received)."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    channels = [
        grpc.aio.insecure_channel(xds, options=[*options, ("grpc.channel_id", i)])
        for i in range(math.ceil(len(nodes) / CLIENTS_PER_CHANNEL))
    ]
    metadata = ProxyNode(NodeId.sidecar(HUB, "0")).metadata()  # a pod's defaults
    sidecars = [
        DeltaSidecar(
            channels[k // CLIENTS_PER_CHANNEL], node_id, NodeId.parse(node_id).name, metadata
        )
        for k, node_id in enumerate(nodes)
    ]
    tasks: list[asyncio.Task[None]] = []
    peak = 0.0
    try:
        # Proxies start over time, not all in one instant: a burst of thousands of new streams
        # overruns the gRPC server's queue of calls not yet accepted, which it then cancels.
        for start in range(0, len(sidecars), CONNECT_BATCH):
            batch = sidecars[start : start + CONNECT_BATCH]
            tasks += [asyncio.create_task(s.run()) for s in batch]
            while not all(s.responses for s in batch):
                if time.monotonic() > deadline or any(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.05)
        while not report_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the control plane did not report in time")
            failed = [k for k, t in enumerate(tasks) if t.done()]
            if failed:
                k = failed[0]
                raise RuntimeError(
                    f"{len(failed)} ADS client streams ended, the first {nodes[k]} after "
                    f"{sidecars[k].responses} responses: {tasks[k].exception()!r}"
                )
            peak = max(peak, rss_mb(cp_pid)[0])
            await asyncio.sleep(0.1)
        peak = max(peak, rss_mb(cp_pid)[0])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
    return peak, sum(s.responses for s in sidecars)


@dataclass(frozen=True)
class ScaleResult:
    services: int
    clients: int
    report: Mapping[str, Any]
    rss_peak_mb: float
    load: str

    def ms(self, target: str, key: str, q: float) -> float:
        values = sorted(v for v in self.report[target][key] if not math.isnan(v))
        return percentile(values, q) * 1000 if values else math.nan

    def timeouts(self, target: str) -> int:
        return sum(math.isnan(v) for v in self.report[target]["end_to_end_s"])


def _run_scale(
    console: Console, services: int, clients: int, changes: int, rebuilds: int
) -> ScaleResult:
    with tempfile.TemporaryDirectory(prefix="xds-convergence-") as tmp:
        workdir = Path(tmp)
        log = workdir / "control-plane.log"
        with log.open("wb") as out:
            command = [sys.executable, "-m", "bench.xds_convergence", "--serve", str(workdir)]
            command += ["--scale", f"{services}x{clients}", "--changes", str(changes)]
            command += ["--rebuilds", str(rebuilds)]
            cp = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            xds = _wait_file(workdir / "xds.json", cp, log, 120)["xds"]
            deadline = time.monotonic() + 300 + 2 * (changes + rebuilds) * 2 * CHANGE_TIMEOUT
            report_file = workdir / "report.json"
            try:
                peak, _ = asyncio.run(
                    _run_clients(xds, _client_ids(services, clients), cp.pid, report_file, deadline)
                )
            except Exception as exc:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"the clients failed ({exc!r}); control plane log:\n{tail}"
                ) from exc
            _check_alive(cp, log, deadline)
            report = json.loads(report_file.read_text())
        finally:
            stop_processes([cp])
    result = ScaleResult(services, clients, report, peak, load_average())
    console.print(
        f"  {services} services x {clients} clients: all connected and ACKed in "
        f"{report['connect_all_acked_s']:.1f} s; {report['groups']} snapshot groups; "
        f"CP RSS peak {peak:.0f} MB"
    )
    for target in ("leaf", "hub"):
        console.print(
            f"    {target}: change -> all ACKed "
            f"p50 {result.ms(target, 'end_to_end_s', 50):.0f} ms, "
            f"p99 {result.ms(target, 'end_to_end_s', 99):.0f} ms, "
            f"rebuild CPU p50 {result.ms(target, 'rebuild_cpu_s', 50):.1f} ms"
        )
    return result


def _scale_table(results: list[ScaleResult], changes: int, rebuilds: int) -> Table:
    table = Table(
        title="xDS convergence with many delta ADS clients (every changed one ACKed)",
        title_justify="left",
    )
    for column in ("services", "clients", "groups", "change", "nodes changed"):
        table.add_column(column, justify="right")
    for column in ("change→all ACKed p50", "p99", "first", "rebuild CPU p50", "p99"):
        table.add_column(column, justify="right")
    for column in ("groups built", "connect→all ACKed", "CP RSS peak", "timeouts", "load avg"):
        table.add_column(column, justify="right")
    for r in results:
        for target in ("leaf", "hub"):
            part = r.report[target]
            table.add_row(
                str(r.services),
                str(r.clients),
                str(r.report["groups"]),
                f"{target} ({part['target']})",
                str(max(part["changed_nodes"])),
                f"{r.ms(target, 'end_to_end_s', 50):.0f} ms",
                f"{r.ms(target, 'end_to_end_s', 99):.0f} ms",
                f"{part['end_to_end_s'][0] * 1000:.0f} ms",
                f"{r.ms(target, 'rebuild_cpu_s', 50):.1f} ms",
                f"{r.ms(target, 'rebuild_cpu_s', 99):.1f} ms",
                str(max(part["built"])),
                f"{r.report['connect_all_acked_s']:.1f} s",
                f"{r.rss_peak_mb:.0f} MB",
                str(r.timeouts(target)),
                r.load,
            )
    table.caption = (
        f"per change target: {changes} end-to-end changes (update, 50 ms debounce, rebuild, "
        f"push, ACK; 'first' is the first change, the leaf's right after every client ACKed) "
        f"and {rebuilds} direct rebuilds; clients: delta ADS stand-ins in one process"
    )
    return table


def _scale_verdicts(console: Console, results: list[ScaleResult]) -> None:
    for r in results:
        p99 = r.ms("leaf", "end_to_end_s", 99)
        for what, measured, goal, ok in (
            (
                f"leaf p99 at {r.services} x {r.clients}",
                f"{p99:.0f} ms",
                f"<= {GOAL_P99_MS:g} ms",
                p99 <= GOAL_P99_MS,
            ),
            (
                f"CP RSS at {r.services} x {r.clients}",
                f"{r.rss_peak_mb:.0f} MB",
                f"<= {GOAL_RSS_MB:g} MB",
                r.rss_peak_mb <= GOAL_RSS_MB,
            ),
        ):
            verdict = "[green]meets[/green]" if ok else "[red]MISSES[/red]"
            console.print(f"{what}: {measured} {verdict} the goal ({goal})")


def _parse_scale(text: str) -> list[tuple[int, int]]:
    pairs = []
    for item in text.split(","):
        services, sep, clients = item.strip().partition("x")
        if not sep or not services.isdigit() or not clients.isdigit() or int(services) < 4:
            raise typer.BadParameter(
                f"{item!r}: expected SERVICESxCLIENTS, e.g. 1000x2000 (at least 4 services)",
                param_hint="--scale",
            )
        pairs.append((int(services), int(clients)))
    return pairs


@app.command()
def main(
    sizes: Annotated[
        str, typer.Option(help="Mesh sizes (services), comma separated.")
    ] = "100,1000",
    changes: Annotated[int, typer.Option(min=1, help="End-to-end changes per size.")] = 100,
    rebuilds: Annotated[int, typer.Option(min=1, help="Direct rebuilds per size.")] = 20,
    sidecars: Annotated[int, typer.Option(min=1, help="Envoys subscribed.")] = 3,
    scale: Annotated[
        str | None,
        typer.Option(
            help="SERVICESxCLIENTS pairs, comma separated (e.g. 1000x2000,5000x10000): connect "
            "that many delta ADS clients instead of Envoys, and change a leaf and the hub."
        ),
    ] = None,
    serve: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Measure how fast a mesh change reaches every subscribed Envoy, at several mesh sizes."""
    if scale is not None:
        pairs = _parse_scale(scale)
        if serve is not None:
            services, clients = pairs[0]
            asyncio.run(_control_plane_clients(serve, services, clients, changes, rebuilds))
            return
        console = Console(width=220)
        print_header(console, "bench.xds_convergence")
        scaled = [_run_scale(console, s, c, changes, rebuilds) for s, c in pairs]
        console.print(_scale_table(scaled, changes, rebuilds))
        _scale_verdicts(console, scaled)
        console.print(f"load average at the end: {load_average()}")
        return
    size_list = [int(s) for s in sizes.split(",") if s.strip()]
    if any(s <= sidecars for s in size_list):
        raise typer.BadParameter("every size must exceed --sidecars", param_hint="--sizes")
    if serve is not None:  # the control-plane process, started by the benchmark itself
        asyncio.run(_control_plane(serve, size_list[0], _sidecar_ids(sidecars), changes, rebuilds))
        return
    console = Console(width=150)
    print_header(console, "bench.xds_convergence")
    console.print(f"sizes {size_list}, {sidecars} Envoys subscribed (delta ADS)")
    results = [_run_size(console, s, sidecars, changes, rebuilds) for s in size_list]
    console.print(_table(results, changes, rebuilds))
    _verdicts(console, results)
    console.print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    app()
