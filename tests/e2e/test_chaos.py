"""Chaos under load: one local mesh, one fault after another, the books checked at the end.

Open-loop PlaceOrder load runs through the ingress during each phase (the loadgen's engine on
its fixed schedule, every call's outcome recorded). A phase lets the load run steadily, injects
its fault, waits (bounded, by polling the run state, the proxies' ACKs or the apps' metrics)
until the mesh has recovered, lets ``AFTER_RECOVERY`` more calls through, and stops the load.
Then it checks that phase's bound on failed calls and cancelled orders. The last test waits
until every saga has ended and runs the books checker (``python -m grpcmesh_orders.books``)
over the three stores: every order terminal, reservations equal to the confirmed lines, one
capture per confirmed order, a refund per compensated charge.

The phases, in order (they share the mesh, and each starts from a recovered one):

1. an orders replica's app (its parent and its workers) is SIGKILLed; the supervisor restarts
   it, and the other replica's recovery loop finishes its interrupted sagas once their leases
   expire;
2. the orders worker that drives a saga is SIGKILLed; its parent starts another in its place;
3. an orders replica's sidecar Envoy is SIGKILLed; the supervisor restarts it;
4. the control plane is SIGKILLed; its supervisor restarts it and the sidecars keep their last
   configuration meanwhile;
5. the payments canary's app (v2, weight 10) is SIGKILLed; its share fails over to v1 until
   the supervisor has it back;
6. payments fails half of all charges with UNAVAILABLE (its own failure setting, live config):
   the route's retries hide most; the rest are in doubt, so the saga re-sends the charge with
   its key and refunds what it captures, and the order ends CANCELLED, not in an error.

The mesh is the e2e resources with two orders replicas of two workers each
(``ORDERS_WORKERS``), so that an orders replica can die while the other one serves (the
replicas share ``RUN/orders/data.db``, hence the sagas), and a worker while its sibling does.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import psutil
import pytest
import yaml

from grpcmesh_control.local.state import ReplicaState
from grpcmesh_loadgen.engine import Answer, drive
from grpcmesh_loadgen.orders import TERMINAL_OUTCOMES, OrderFactory, placer
from grpcmesh_loadgen.stats import LoadMode, LoadReport, summarize
from grpcmesh_orders.books import BooksReport, audit
from tests.e2e.harness import (
    RESOURCES,
    Mesh,
    app_processes,
    config_reloads,
    converged,
    eventually,
    handled,
    proxies,
    reloaded,
)

pytestmark = pytest.mark.slow

RATE = 15.0
"""Orders per second, open loop, in every phase."""
STEADY = 15
"""Calls completed before the fault: the load is flowing when it strikes."""
AFTER_RECOVERY = 30
"""Calls started after recovery that must complete before the phase's load stops."""
PHASE_MAX_S = 75.0
"""The longest a phase's load may run (its call count is ``RATE`` times this)."""
DEADLINE_S = 10.0
"""Each PlaceOrder's deadline: longer than a saga that compensates, so a slow compensation
shows as a late CANCELLED, not as a client error."""
RECOVERY_S = 45.0
"""Bound on each recovery wait: a restart's back-off plus a Python app's start on a busy
2-core machine."""
SAGAS_END_S = 60.0
"""Bound on the wait for every saga to end: a killed replica's leases last 15 s, the
recovery loop scans every 2 s."""

PAYMENTS_PHASE = "payments fail 50% of charges"
PAYMENT_FAILURE_RATE = 0.5
PAYMENTS_CANCELLED_MIN = 5
"""Orders cancelled (their charge compensated) before the payment fault is lifted."""


ORDERS_WORKERS = 2
"""Orders runs two worker processes per replica here (``spec.workload.workers``), whatever
``GRPCMESH_E2E_WORKERS`` says for the other services (more, if it says more): the sagas are
driven by four processes sharing one store, and a worker can die on its own (the phase that
kills one). An app with workers is the harder case of every orders phase; the canary and the
other services keep one process unless ``GRPCMESH_E2E_WORKERS`` says otherwise."""


# --- the mesh ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The e2e resources, with two orders replicas of ``ORDERS_WORKERS`` (this module's own
    mesh)."""
    base = tmp_path_factory.mktemp("chaos")
    resources = base / "resources"
    resources.mkdir()
    for path in sorted(RESOURCES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["metadata"]["name"] == "orders":
            doc["spec"]["replicas"] = 2
            doc["spec"]["workload"]["workers"] = ORDERS_WORKERS
        (resources / path.name).write_text(yaml.safe_dump(doc))
    mesh = Mesh(base / "run", resources)
    mesh.start(timeout=180)
    try:
        yield mesh
    finally:
        assert mesh.stop() == 128 + signal.SIGTERM, mesh.log.read_text()[-3000:]


# --- load with a fault in the middle -------------------------------------------------------------


NOTICE_S = 0.1
"""Calls started this soon after a kill count as in flight at it. The proxy in front of the
dead process learns that its connection closed on its next event-loop turn, and a call it
dispatched onto that connection meanwhile is reset mid-call like one sent before the kill (not
resent: PlaceOrder is not idempotent). Seen once in six runs, 67 ms after a sidecar kill."""


@dataclass
class Load:
    """What the load has done so far, for a fault that waits on it or marks its moment."""

    answers: dict[int, Answer] = field(default_factory=dict)
    started: int = 0
    """Calls started (they start in index order)."""
    starts: dict[int, float] = field(default_factory=dict)
    ends: dict[int, float] = field(default_factory=dict)
    struck: float | None = None
    """When the fault struck (``strike``), on the event loop's clock."""

    def strike(self) -> None:
        """Called right before the fault, with no await in between."""
        self.struck = asyncio.get_running_loop().time()

    @property
    def in_flight_at_fault(self) -> frozenset[int]:
        """The calls started before the fault (or within ``NOTICE_S`` after it) and not
        answered before it."""
        if self.struck is None:
            return frozenset()
        struck = self.struck
        return frozenset(
            i
            for i, at in self.starts.items()
            if at < struck + NOTICE_S and self.ends.get(i, math.inf) > struck
        )

    def cancelled(self, since: int = 0) -> int:
        return sum(i >= since and a.outcome == "CANCELLED" for i, a in self.answers.items())


@dataclass
class Phase:
    name: str
    report: LoadReport
    load: Load
    recovery_s: float
    """From the fault to the recovery the phase waited for."""
    first_after: int
    """The first call started after recovery."""

    @property
    def cancelled(self) -> int:
        return self.report.outcomes.get("CANCELLED", 0)

    def hurt(self) -> tuple[set[int], set[int]]:
        """The calls that failed, and those whose order was cancelled."""
        answers = self.load.answers
        return (
            {i for i, a in answers.items() if a.status != "OK"},
            {i for i, a in answers.items() if a.outcome == "CANCELLED"},
        )

    def line(self) -> str:
        r = self.report
        return (
            f"{self.name}: {r.completed} calls, {r.failed} failed {dict(r.statuses)}, "
            f"outcomes {dict(r.outcomes)}, {len(self.load.in_flight_at_fault)} in flight at "
            f"the fault, recovered in {self.recovery_s:.1f}s, "
            f"p50 {r.latency.p50 * 1000:.0f} ms, p99 {r.latency.p99 * 1000:.0f} ms, "
            f"max {r.latency.max:.2f}s; errors: {list(r.error_samples)}"
        )


PHASES: dict[str, Phase] = {}
"""Every phase run so far, for the summary the last test prints."""


async def under_load(
    mesh: Mesh, name: str, fault: Callable[[Load], Awaitable[None]], *, seed: int
) -> Phase:
    """Run open-loop load, call ``fault`` (which injects a fault and returns once the mesh has
    recovered) once ``STEADY`` calls have completed, and stop the load once ``AFTER_RECOVERY``
    calls started after recovery have been answered."""
    count = int(RATE * PHASE_MAX_S)
    factory = OrderFactory(f"chaos-{name.replace(' ', '-')}-{uuid.uuid4().hex[:6]}", seed=seed)
    requests = [factory.request(i) for i in range(count)]
    progress = Load()
    answers = progress.answers
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(mesh.state.ingress) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        place = placer(channel, requests, deadline_s=DEADLINE_S)

        async def call(index: int) -> Answer:
            loop = asyncio.get_running_loop()
            progress.started = max(progress.started, index + 1)
            progress.starts[index] = loop.time()
            answer = await place(index)
            progress.ends[index] = loop.time()
            answers[index] = answer
            return answer

        load = asyncio.create_task(drive(call, count=count, rate=RATE, concurrency=64, stop=stop))
        try:
            await _until(lambda: len(answers) >= STEADY, load, f"{name}: the load flows")
            began = time.monotonic()
            await fault(progress)
            recovery_s = time.monotonic() - began
            first_after = progress.started
            await _until(
                lambda: sum(i >= first_after for i in answers) >= AFTER_RECOVERY,
                load,
                f"{name}: {AFTER_RECOVERY} calls after recovery",
            )
        finally:
            stop.set()
            run = await load
    report = summarize(
        run.results,
        target=mesh.state.ingress,
        mode=LoadMode.OPEN,
        planned=len(run.results),
        target_rate=RATE,
        concurrency=64,
        elapsed_s=run.elapsed_s,
        expected_outcomes=TERMINAL_OUTCOMES,
    )
    phase = Phase(name, report, progress, recovery_s, first_after)
    PHASES[name] = phase
    print(phase.line())
    return phase


async def _until(condition: Callable[[], bool], load: asyncio.Task[Any], what: str) -> None:
    async def probe() -> bool:
        if load.done():
            raise AssertionError(f"{what}: the load ended first ({PHASE_MAX_S:g}s of calls)")
        return condition()

    await eventually(probe, timeout=PHASE_MAX_S, what=what, every=0.05)


def _assert_only_calls_in_flight_were_hurt(phase: Phase) -> None:
    """The bound of a kill: a call can fail, or its order be cancelled, only if it was in
    flight when the process died (``Load.in_flight_at_fault``); every call started after the
    kill is placed and confirmed (resent to a live replica or version when it reached the dead
    one)."""
    report = phase.report
    assert report.unexpected_outcomes == 0, phase.line()
    failed, cancelled = phase.hurt()
    assert failed <= phase.load.in_flight_at_fault, phase.line()
    later = cancelled - phase.load.in_flight_at_fault
    assert not later, (sorted(later), phase.line())
    assert report.completed >= STEADY + AFTER_RECOVERY, phase.line()


# --- waits ---------------------------------------------------------------------------------------


async def _restarted(mesh: Mesh, key: str, process: str, before: int, old_pid: int) -> None:
    """``process`` ("app" or "sidecar") of replica ``key`` runs again, restarted by the
    supervisor (its restart count one more, a new pid), and the replica is ready."""

    async def probe() -> bool:
        replica = mesh.replica(key)
        restarts = replica.app_restarts if process == "app" else replica.sidecar_restarts
        pid = replica.app_pid if process == "app" else replica.sidecar_pid
        return replica.ready and restarts == before + 1 and pid not in (None, old_pid)

    await eventually(probe, timeout=RECOVERY_S, what=f"{key}'s {process} is restarted and ready")


async def _converged(mesh: Mesh) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status = await asyncio.to_thread(mesh.status)
        return status if converged(status) else None

    return await eventually(
        probe, timeout=RECOVERY_S, what="every proxy ACKs its snapshot", every=1
    )


# --- the phases ----------------------------------------------------------------------------------


PAYMENTS_LATENCY_MS = 150
"""Payments' latency while an orders process is killed: each saga then spends ~150 ms in its
charge, so the victim holds sagas when it dies (the case recovery exists for), not by luck."""

INTERRUPTED: set[str] = set()
"""Orders whose saga a killed orders process held: the books test checks they all ended."""


def _leases_by_pid(mesh: Mesh, pids: set[int]) -> dict[int, set[str]]:
    """The orders whose saga lease each of the processes ``pids`` holds (owner is
    host/pid/id), for those that hold any."""
    conn = sqlite3.connect(f"file:{mesh.run_dir / 'orders/data.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT order_id, owner FROM saga_leases").fetchall()
    finally:
        conn.close()
    held: dict[int, set[str]] = {}
    for order, owner in rows:
        pid = int(owner.split("/")[1])
        if pid in pids:
            held.setdefault(pid, set()).add(order)
    return held


Victim = Literal["app", "driver", "sidecar"]
"""What ``_kill_mid_saga`` kills of a replica: its whole app (every process of it, as when a
container dies), the one app process that drives a saga (a worker, with ``workers`` > 1), or
its sidecar."""


async def _kill_mid_saga(mesh: Mesh, load: Load, replica: ReplicaState, victim: Victim) -> int:
    """SIGKILL ``victim`` once a process of ``replica``'s app drives at least one saga; the
    pid killed (for the app, its first process: the group's leader)."""
    assert replica.app_pid is not None and replica.sidecar_pid is not None

    async def holding() -> dict[int, set[str]]:
        pids = await asyncio.to_thread(app_processes, replica)
        return await asyncio.to_thread(_leases_by_pid, mesh, set(pids))

    held = await eventually(holding, timeout=RECOVERY_S, what="the orders app drives a saga")
    driver, driven = max(held.items(), key=lambda item: len(item[1]))
    load.strike()
    if victim == "app":
        # The launcher starts the app leading its own process group; its workers are in it.
        os.killpg(replica.app_pid, signal.SIGKILL)
        INTERRUPTED.update(*held.values())
        return replica.app_pid
    pid = driver if victim == "driver" else replica.sidecar_pid
    os.kill(pid, signal.SIGKILL)
    # A dead sidecar interrupts the sagas of every process of the app.
    INTERRUPTED.update(driven if victim == "driver" else set().union(*held.values()))
    return pid


async def _worker_replaced(mesh: Mesh, replica: ReplicaState, old_pid: int, workers: int) -> None:
    """The app's parent has started a worker in place of ``old_pid`` (its own supervisor, the
    launcher, restarted nothing): it has ``workers`` again, each listening on the app's
    port, and the replica is ready."""
    port = int(replica.app.rpartition(":")[2])

    def listening(pid: int) -> bool:
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            for c in psutil.Process(pid).net_connections(kind="tcp")
        )

    def replaced() -> bool:
        now = mesh.replica(_key(replica))
        if now.app_pid != replica.app_pid or now.app_restarts != replica.app_restarts:
            raise AssertionError(f"the launcher restarted {_key(replica)}'s app: {now}")
        try:
            running = psutil.Process(replica.app_pid).children()
            return (
                now.ready
                and len(running) == workers
                and old_pid not in {w.pid for w in running}
                and all(listening(w.pid) for w in running)
            )
        except psutil.NoSuchProcess:
            return False

    async def probe() -> bool:
        return await asyncio.to_thread(replaced)

    await eventually(probe, timeout=RECOVERY_S, what=f"{_key(replica)}'s worker is replaced")


async def _set_payments(mesh: Mesh, **values: object) -> None:
    """Change every payments replica's live config, and wait until each app has reloaded it."""
    replicas = list(mesh.payments_replicas())
    metrics = [r.metrics for r in replicas]
    before = [await config_reloads(m) for m in metrics]
    for replica in replicas:
        mesh.set_config(_key(replica), **values)
    await reloaded(metrics, before, mesh.workers)


async def test_an_orders_replica_killed_mid_saga_under_load(mesh: Mesh) -> None:
    """Bound: only calls in flight at the kill may fail (a reset mid-call is not resent for a
    method that is not idempotent), or have their order cancelled; later calls that reach the
    dead app are answered "not delivered" by its sidecar and resent by the ingress to the other
    replica, until the supervisor marks it not ready and restarts it. Every process of the app
    dies at once (its workers with it, as in a container). Every saga it held is finished by
    recovery once its lease expires (checked by the books test)."""
    replica = mesh.replica("orders/v1-1")
    assert replica.app_pid is not None
    await _set_payments(mesh, latency_ms=PAYMENTS_LATENCY_MS)
    try:

        async def fault(load: Load) -> None:
            killed = await _kill_mid_saga(mesh, load, replica, "app")
            await _restarted(mesh, _key(replica), "app", replica.app_restarts, killed)

        phase = await under_load(mesh, "orders app killed", fault, seed=61)
    finally:
        await _set_payments(mesh, latency_ms=0)
    _assert_only_calls_in_flight_were_hurt(phase)


async def test_an_orders_worker_killed_mid_saga_under_load(mesh: Mesh) -> None:
    """Bound: as for a killed app. The orders app has ``ORDERS_WORKERS``; the worker that
    drives a saga is SIGKILLed and its parent starts another in its place (the launcher
    restarts nothing, the replica stays ready). Calls in flight on the dead worker's
    connections from its sidecar fail; the sidecar's other connections, to the live worker,
    carry on. The sagas the worker held are finished by recovery (the books test), by the
    other worker, the new one or the other replica."""
    replica = mesh.replica("orders/v1-1")
    assert replica.app_pid is not None
    await _set_payments(mesh, latency_ms=PAYMENTS_LATENCY_MS)
    try:

        async def fault(load: Load) -> None:
            assert replica.app_pid is not None
            workers = len(await asyncio.to_thread(psutil.Process(replica.app_pid).children))
            assert workers >= ORDERS_WORKERS, workers
            killed = await _kill_mid_saga(mesh, load, replica, "driver")
            assert killed != replica.app_pid, "the parent serves no calls: it drives no saga"
            await _worker_replaced(mesh, replica, killed, workers)

        phase = await under_load(mesh, "orders worker killed", fault, seed=66)
    finally:
        await _set_payments(mesh, latency_ms=0)
    _assert_only_calls_in_flight_were_hurt(phase)


async def test_an_orders_sidecar_killed_mid_saga_under_load(mesh: Mesh) -> None:
    """Bound: only calls in flight at the kill may fail (their connections through the killed
    Envoy reset) or have their order cancelled (a saga step of that replica's app that found
    no sidecar never left, so its saga compensates). New calls fail over to the other replica
    (connect failures are resent), and the restarted Envoy takes its configuration again;
    its app's calls wait for their channels to reconnect to it (the kit's ``SIDECAR_WAIT_S``)
    rather than fail as never sent."""
    replica = mesh.replica("orders/v1-0")
    assert replica.app_pid is not None and replica.sidecar_pid is not None
    await _set_payments(mesh, latency_ms=PAYMENTS_LATENCY_MS)
    try:

        async def fault(load: Load) -> None:
            assert replica.app_pid is not None and replica.sidecar_pid is not None
            await _kill_mid_saga(mesh, load, replica, "sidecar")
            await _restarted(
                mesh, _key(replica), "sidecar", replica.sidecar_restarts, replica.sidecar_pid
            )
            await _converged(mesh)  # the new Envoy holds (ACKed) its configuration

        phase = await under_load(mesh, "orders sidecar killed", fault, seed=62)
    finally:
        await _set_payments(mesh, latency_ms=0)
    _assert_only_calls_in_flight_were_hurt(phase)


async def test_the_control_plane_killed_under_load(mesh: Mesh) -> None:
    """Bound: no call fails and no order is cancelled. The data plane does not depend on the
    control plane from call to call: every Envoy keeps its last configuration, and the
    restarted control plane serves the same (content-hash) versions."""
    state = mesh.state
    assert state.control_plane_pid is not None
    before = {n: p["acked_version"] for n, p in proxies(await _converged(mesh)).items()}

    async def fault(load: Load) -> None:
        assert state.control_plane_pid is not None
        load.strike()
        os.kill(state.control_plane_pid, signal.SIGKILL)

        async def restarted() -> bool:
            now = mesh.state
            return (
                now.control_plane_restarts == state.control_plane_restarts + 1
                and now.control_plane_pid not in (None, state.control_plane_pid)
            )

        await eventually(restarted, timeout=RECOVERY_S, what="the control plane restarts")
        after = await _converged(mesh)
        assert {n: p["acked_version"] for n, p in proxies(after).items()} == before

    phase = await under_load(mesh, "control plane killed", fault, seed=63)
    assert phase.report.failed == 0, phase.line()
    assert phase.report.outcomes == {"CONFIRMED": phase.report.completed}, phase.line()


async def test_the_canary_app_killed_under_load(mesh: Mesh) -> None:
    """Bound: only calls in flight at the kill may fail or be cancelled. The canary's share
    fails over to v1: its sidecar answers "not delivered", which the caller's Envoy resends to
    the other version, then its endpoint leaves EDS until the supervisor has it back. A charge
    inside the dead app is in doubt: the saga re-sends it with its key, refunds what that
    captured, and cancels the order."""
    canary = mesh.replica("payments/v2-0")
    assert canary.app_pid is not None
    served = await handled(canary.metrics, "Charge")

    async def fault(load: Load) -> None:
        assert canary.app_pid is not None

        async def serving() -> bool:
            return await handled(canary.metrics, "Charge") >= served + 3

        await eventually(serving, timeout=RECOVERY_S, what="the canary takes its share")
        load.strike()
        os.killpg(canary.app_pid, signal.SIGKILL)  # the app and its workers, if it has any
        await _restarted(mesh, _key(canary), "app", canary.app_restarts, canary.app_pid)

        async def back() -> bool:  # the new process counts from zero
            return await handled(mesh.replica(_key(canary)).metrics, "Charge") >= 3

        await eventually(back, timeout=RECOVERY_S, what="the restarted canary takes its share")

    phase = await under_load(mesh, "canary app killed", fault, seed=64)
    _assert_only_calls_in_flight_were_hurt(phase)


async def test_payment_failures_under_load_cancel_orders_without_errors(mesh: Mesh) -> None:
    """Bound: no call fails. Payments answers UNAVAILABLE to half the charges (nothing
    recorded, as in a provider outage); the route retries UNAVAILABLE twice, and a charge whose
    three attempts all failed is in doubt: the saga re-sends it with its key until it has an
    outcome, refunds the capture, releases the stock and cancels. Clients see CANCELLED
    orders, never an error; the books test checks a refund per such charge."""

    async def fault(load: Load) -> None:
        load.strike()
        since = load.started
        await _set_payments(
            mesh, failure_rate=PAYMENT_FAILURE_RATE, failure_code="UNAVAILABLE", random_seed=65
        )
        try:

            async def cancelled() -> bool:
                return load.cancelled(since) >= PAYMENTS_CANCELLED_MIN

            await eventually(
                cancelled,
                timeout=RECOVERY_S,
                what=f"{PAYMENTS_CANCELLED_MIN} orders cancelled by payment failures",
            )
        finally:
            await _set_payments(mesh, failure_rate=0.0)

    phase = await under_load(mesh, PAYMENTS_PHASE, fault, seed=65)
    report = phase.report
    assert report.failed == 0, phase.line()
    assert report.unexpected_outcomes == 0, phase.line()
    assert phase.cancelled >= PAYMENTS_CANCELLED_MIN, phase.line()
    # Once payments is well again, nothing is cancelled.
    assert all(
        a.outcome == "CONFIRMED" for i, a in phase.load.answers.items() if i >= phase.first_after
    ), phase.line()


# --- the books -----------------------------------------------------------------------------------


def _stores(mesh: Mesh) -> tuple[Path, Path, Path]:
    run = mesh.run_dir
    return (run / "orders/data.db", run / "inventory/data.db", run / "payments/data.db")


async def test_the_books_balance_after_the_chaos(mesh: Mesh) -> None:
    """Every saga ends (the killed replica's by recovery), and the books checker, run as an
    operator would, finds them balanced."""
    assert len(PHASES) == 6, f"the phases before this test did not all run: {sorted(PHASES)}"

    async def ended() -> BooksReport | None:
        report = await asyncio.to_thread(audit, *_stores(mesh))
        return report if "PENDING" not in report.orders else None

    report = await eventually(ended, timeout=SAGAS_END_S, what="every saga ends", every=1)
    # Among them the sagas the killed orders app and sidecar interrupted.
    assert INTERRUPTED
    states = await asyncio.to_thread(_order_states, _stores(mesh)[0], INTERRUPTED)
    assert set(states) == INTERRUPTED and set(states.values()) <= {"CONFIRMED", "CANCELLED"}
    orders, inventory, payments = _stores(mesh)
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "grpcmesh_orders.books",
            "--orders",
            str(orders),
            "--inventory",
            str(inventory),
            "--payments",
            str(payments),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "books balance" in result.stdout
    placed = sum(p.report.ok for p in PHASES.values())
    assert sum(report.orders.values()) >= placed
    # The payment phase's cancelled orders each had a charge captured and then refunded.
    assert report.refunded >= PHASES[PAYMENTS_PHASE].cancelled, report.summary()
    print(json.dumps({name: p.line() for name, p in PHASES.items()}, indent=1))


def _order_states(db: Path, orders: set[str]) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT order_id, state FROM orders").fetchall()
    finally:
        conn.close()
    return {order: state for order, state in rows if order in orders}


def _key(replica: ReplicaState) -> str:
    return f"{replica.service}/{replica.replica}"
