"""Faults a local user could cause, on the real local mesh.

Failover across versions: the payments canary (v2, weight 10, one replica) loses its app and
then its sidecar while orders flow through the ingress at an open-loop rate. Its share must go
to v1 without failing calls or cancelling orders, and refunds (the saga's compensations, which
take the same route) must go through as well.

The Envoy admin lock: no TCP client can quit (or otherwise change) a sidecar through its admin
port, which serves only what the tooling reads; the admin interface is a 0600 unix socket.

Its own module, so its own mesh: nothing restarts the dead canary (the local supervisor does
not restart apps), and the other e2e modules need it alive.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
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
RATE = 15.0  # orders per second, open loop: about 20 s of load
FAILED_CALLS_MAX = ORDERS // 100  # at most 1 %
V2_ROUTED = ("upstream_rq_total", "upstream_cx_none_healthy")
"""Calls the route sent to the canary's cluster: to a host, or answered "no healthy upstream"."""
ROUTED_AFTER_EACH_KILL = 5
"""Calls the route still sends to the canary's cluster after each kill, before the next step:
proof that the failover, not luck, kept them from failing."""
REFUNDS = 40


async def _routed_to_v2(admin: str) -> int:
    stats = await envoy_stats(admin, "cluster.payments|v2.")
    return sum(stats.get(f"cluster.payments|v2.{name}", 0) for name in V2_ROUTED)


def _routed_more(admin: str, since: int, more: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await _routed_to_v2(admin) >= since + more

    return probe


async def _kill_under_load(pid: int, caller: str, what: str) -> None:
    """SIGKILL ``pid``, then wait until the caller's route has sent the canary's cluster
    ``ROUTED_AFTER_EACH_KILL`` more calls."""
    os.kill(pid, signal.SIGKILL)
    since = await _routed_to_v2(caller)
    await eventually(
        _routed_more(caller, since, ROUTED_AFTER_EACH_KILL),
        timeout=20,
        what=f"calls routed to the canary's cluster after {what} died",
    )


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

    async with (
        grpc.aio.insecure_channel(mesh.state.ingress) as channel,
        asyncio.TaskGroup() as group,
    ):
        stub: Stub = payments_pb2_grpc.PaymentServiceStub(channel)
        payments = await _charge(stub, 2 * REFUNDS)
        load = group.create_task(
            run_load(mesh.state.ingress, orders=ORDERS, rate=RATE, deadline_s=10.0, seed=15)
        )

        async def canary_served() -> bool:
            return await handled(canary.metrics, "Charge") >= canary_charges + 3

        await eventually(canary_served, timeout=20, what="the canary serves its share")

        # 1. The app dies; its sidecar lives on and answers "upstream connect error".
        await _kill_under_load(canary.app_pid, caller, "its app")
        refunds_app_dead = await _refund(stub, payments[:REFUNDS])
        # 2. Its sidecar dies too: connections to it are refused.
        await _kill_under_load(canary.sidecar_pid, caller, "its sidecar")
        refunds_all_dead = await _refund(stub, payments[REFUNDS:])
        report = await load

    assert report.completed == ORDERS, report.statuses
    assert report.failed <= FAILED_CALLS_MAX, (report.statuses, report.error_samples)
    # No order is cancelled because the canary died (stock is plentiful, no payment declines).
    assert report.outcomes == {"CONFIRMED": report.ok}, report.outcomes
    # Compensations take the same route: every refund goes through, either way the canary died.
    assert refunds_app_dead == {"OK": REFUNDS}, refunds_app_dead
    assert refunds_all_dead == {"OK": REFUNDS}, refunds_all_dead
