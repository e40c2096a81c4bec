"""Faults a local user could cause, on the real local mesh.

Failover across versions: the payments canary (v2, weight 10, one replica) loses its app and
then its sidecar while orders flow through the ingress at an open-loop rate. Its share must go
to v1 without failing calls or cancelling orders, and refunds (the saga's compensations, which
take the same route) must go through as well. The one exception is a charge in flight inside
the canary when a kill strikes: it may have been captured, nobody can tell, so the saga refunds
it and cancels its order, as it must.

The Envoy admin lock: no TCP client can quit (or otherwise change) a sidecar through its admin
port, which serves only what the tooling reads; the admin interface is a 0600 unix socket.

Its own module, so its own mesh: the supervisor restarts the dead canary's app and sidecar
(after a back-off, then a start that takes seconds on a busy machine), and the other e2e
modules' tests count on a canary that has served all along.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import stat
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc
import psutil
import pytest

from grpcmesh.shop.v1 import common_pb2, payments_pb2, payments_pb2_grpc
from grpcmesh_loadgen import run_load
from tests.e2e.harness import Mesh, envoy_stats, eventually, handled

if TYPE_CHECKING:
    # Exists only in the generated stubs, for typing async stubs.
    from grpcmesh.shop.v1.payments_pb2_grpc import PaymentServiceAsyncStub as Stub

pytestmark = pytest.mark.slow

ORDERS = 300
"""The least the load places: it runs on until both kills have played out, which takes longer
where a restart is slow (an app with workers starts its processes one after the other)."""
ORDERS_MAX = 1500
RATE = 15.0  # orders per second, open loop: at least 20 s of load
FAILED_PERCENT = 1
V2_ROUTED = ("upstream_rq_total", "upstream_cx_none_healthy")
"""Calls the route sent to the canary's cluster: to a host, or answered "no healthy upstream"."""
ROUTED_AFTER_EACH_KILL = 5
"""Calls the route still sends to the canary's cluster after each kill, before the next step:
proof that the failover, not luck, kept them from failing. (The route sends the canary's
share elsewhere while it has no ready endpoint, so these are the calls before that, and after
the supervisor has restarted it.)"""
REFUNDS = 40


async def _routed_to_v2(admin: str) -> int:
    stats = await envoy_stats(admin, "cluster.payments|v2.")
    return sum(stats.get(f"cluster.payments|v2.{name}", 0) for name in V2_ROUTED)


def _routed_more(admin: str, since: int, more: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await _routed_to_v2(admin) >= since + more

    return probe


async def _kill_under_load(
    pid: int, caller: str, what: str, kills: list[float], *, group: bool = False
) -> None:
    """SIGKILL ``pid`` (with ``group``, its whole process group: an app and its workers, as
    when a container dies), note the moment in ``kills`` (wall clock, as the orders' event
    log), then wait until the caller's route has sent the canary's cluster
    ``ROUTED_AFTER_EACH_KILL`` more calls."""
    kills.append(time.time())
    if group:
        os.killpg(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)
    since = await _routed_to_v2(caller)
    await eventually(
        _routed_more(caller, since, ROUTED_AFTER_EACH_KILL),
        timeout=20,
        what=f"calls routed to the canary's cluster after {what} died",
    )


NOTICE_S = 0.1
"""A charge sent this soon after a kill counts as in flight at it: the proxy in front of the
dead process may dispatch onto its closed connection until its next event-loop turn (as in
tests/e2e/test_chaos.py)."""


def _placed(db: Path) -> bool:
    """Whether the orders service holds ``ORDERS`` orders (this module's mesh places no other)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (count,) = conn.execute("SELECT count(*) FROM orders").fetchone()
    finally:
        conn.close()
    return bool(count >= ORDERS)


def _charges_of_cancelled_orders(db: Path) -> dict[str, tuple[datetime, datetime]]:
    """Every cancelled order whose charge failed: when it could have been sent (its stock was
    reserved, the step before) and when its failure was logged."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT e.order_id, e.type, e.time, e.payload FROM order_events e"
            " JOIN orders o ON o.order_id = e.order_id WHERE o.state = 'CANCELLED'"
            " ORDER BY e.order_id, e.sequence"
        ).fetchall()
    finally:
        conn.close()
    reserved: dict[str, datetime] = {}
    charges: dict[str, tuple[datetime, datetime]] = {}
    for order, kind, at, payload in rows:
        if kind == "STOCK_RESERVED":
            reserved[order] = datetime.fromisoformat(at)
        elif kind == "STEP_FAILED" and json.loads(payload)["step"] == "charge":
            charges.setdefault(order, (reserved[order], datetime.fromisoformat(at)))
    return charges


async def _charge(stub: Stub, n: int) -> list[str]:
    """``n`` charges (any version takes them): the payment ids to refund later."""
    prefix = uuid.uuid4().hex[:8]
    ids = []
    for i in range(n):
        response = await stub.Charge(
            payments_pb2.ChargeRequest(
                idempotency_key=f"{prefix}-{i}",
                order_id=f"order-{prefix}-{i}",
                customer_id="customer-failover",
                amount=common_pb2.Money(currency_code="USD", amount_minor=500 + i),
            ),
            timeout=10,
        )
        ids.append(response.payment.payment_id)
    return ids


async def _refund(stub: Stub, ids: list[str]) -> dict[str, int]:
    codes: dict[str, int] = {}
    for payment_id in ids:
        try:
            await stub.Refund(
                payments_pb2.RefundRequest(
                    idempotency_key=f"refund-{payment_id}", payment_id=payment_id
                ),
                timeout=10,
            )
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        codes[code] = codes.get(code, 0) + 1
    return codes


def _http(method: str, url: str) -> int:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_no_tcp_client_can_quit_an_envoy(mesh: Mesh) -> None:
    replica = mesh.replica("payments/v1-0")
    assert replica.sidecar_pid is not None
    for admin in (replica.sidecar_admin, mesh.state.ingress_admin):
        for method, path in (("POST", "/quitquitquit"), ("GET", "/quitquitquit")):
            status = await asyncio.to_thread(_http, method, f"http://{admin}{path}")
            assert status == 404, (admin, method, path, status)
        for mutation in ("/healthcheck/fail", "/drain_listeners", "/runtime_modify?x=1"):
            assert await asyncio.to_thread(_http, "POST", f"http://{admin}{mutation}") == 404
        # What the tooling reads is still there.
        assert await asyncio.to_thread(_http, "GET", f"http://{admin}/ready") == 200
        assert await asyncio.to_thread(_http, "GET", f"http://{admin}/stats?filter=live") == 200
    assert psutil.Process(replica.sidecar_pid).is_running()
    assert mesh.replica("payments/v1-0").ready

    # The whole admin interface is a unix socket only its owner may connect to.
    socket_path = Path(replica.config_file).with_name("admin.sock")
    mode = socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as session,
        session.get("http://admin/server_info") as response,
    ):
        assert response.status == 200
        assert (await response.json())["state"] == "LIVE"


async def test_a_dead_canary_fails_over_to_the_other_version(mesh: Mesh) -> None:
    canary = mesh.replica("payments/v2-0")
    assert canary.app_pid is not None and canary.sidecar_pid is not None
    caller = next(r for r in mesh.state.replicas if r.service == "orders").sidecar_admin
    canary_charges = await handled(canary.metrics, "Charge")
    kills: list[float] = []

    async with (
        grpc.aio.insecure_channel(mesh.state.ingress) as channel,
        asyncio.TaskGroup() as group,
    ):
        stub: Stub = payments_pb2_grpc.PaymentServiceStub(channel)
        payments = await _charge(stub, 2 * REFUNDS)
        stop = asyncio.Event()
        load = group.create_task(
            run_load(
                mesh.state.ingress,
                orders=ORDERS_MAX,
                rate=RATE,
                deadline_s=10.0,
                seed=15,
                stop=stop,
            )
        )

        async def canary_served() -> bool:
            return await handled(canary.metrics, "Charge") >= canary_charges + 3

        await eventually(canary_served, timeout=20, what="the canary serves its share")

        # 1. The app dies (every process of it); its sidecar lives on and answers "upstream
        #    connect error".
        # The launcher starts the app leading its own process group, its workers in it.
        await _kill_under_load(canary.app_pid, caller, "its app", kills, group=True)
        refunds_app_dead = await _refund(stub, payments[:REFUNDS])
        # 2. Its sidecar dies too: connections to it are refused.
        await _kill_under_load(canary.sidecar_pid, caller, "its sidecar", kills)
        refunds_all_dead = await _refund(stub, payments[REFUNDS:])
        await eventually(
            lambda: asyncio.to_thread(_placed, mesh.run_dir / "orders/data.db"),
            timeout=ORDERS / RATE + 30,
            what=f"{ORDERS} orders placed",
        )
        stop.set()
        report = await load

    assert ORDERS <= report.completed == report.planned < ORDERS_MAX, report.statuses
    assert report.failed <= report.completed * FAILED_PERCENT / 100, (
        report.statuses,
        report.error_samples,
    )
    # No order is cancelled because the canary died (stock is plentiful, no payment declines),
    # but one whose charge was in flight at a kill (sent before it, failed after it).
    cancelled = await asyncio.to_thread(
        _charges_of_cancelled_orders, mesh.run_dir / "orders/data.db"
    )
    assert report.outcomes.get("CANCELLED", 0) == len(cancelled), (report.outcomes, cancelled)
    struck = [datetime.fromtimestamp(k, UTC) for k in kills]
    notice = timedelta(seconds=NOTICE_S)
    assert all(
        any(sent <= kill + notice and kill <= failed for kill in struck)
        for sent, failed in cancelled.values()
    ), (struck, cancelled)
    assert report.outcomes.get("CONFIRMED", 0) + len(cancelled) == report.ok, report.outcomes
    # Compensations take the same route: every refund goes through, either way the canary died.
    assert refunds_app_dead == {"OK": REFUNDS}, refunds_app_dead
    assert refunds_all_dead == {"OK": REFUNDS}, refunds_all_dead
