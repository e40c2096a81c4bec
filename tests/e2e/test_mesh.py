"""The mesh end to end: real Envoys configured over xDS by the control plane, the reference
services behind them, gRPC clients calling through the ingress (tests/e2e/resources).

Tests that change the mesh (config files, applied resources) restore it before they return,
so they can share one mesh in any order.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from grpcmesh.shop.v1 import common_pb2, payments_pb2, payments_pb2_grpc
from grpcmesh_loadgen import LoadReport, run_load
from tests.e2e.harness import (
    INVALID,
    RESOURCES,
    Mesh,
    config_reloads,
    converged,
    envoy_stats,
    eventually,
    handled,
    invalid_resource,
    proxies,
    reloaded,
)

if TYPE_CHECKING:
    # Exists only in the generated stubs, for typing async stubs.
    from grpcmesh.shop.v1.payments_pb2_grpc import PaymentServiceAsyncStub as Stub

pytestmark = pytest.mark.slow

CHARGE = "Charge"
PAYMENTS_YAML = RESOURCES / "payments.yaml"


def _charge_request(prefix: str, i: int) -> payments_pb2.ChargeRequest:
    return payments_pb2.ChargeRequest(
        idempotency_key=f"{prefix}-{i}",
        order_id=f"order-{prefix}-{i}",
        customer_id="customer-e2e",
        amount=common_pb2.Money(currency_code="USD", amount_minor=1000 + i),
    )


@asynccontextmanager
async def payments_stub(address: str) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield payments_pb2_grpc.PaymentServiceStub(channel)


async def charges(
    address: str, count: int, *, concurrency: int = 16, deadline_s: float = 10.0
) -> dict[str, int]:
    """``count`` Charge calls with fresh keys through ``address``; calls by status code."""
    prefix = uuid.uuid4().hex[:8]
    codes: dict[str, int] = {}
    queue = iter(range(count))
    async with payments_stub(address) as stub:

        async def worker() -> None:
            for i in queue:
                try:
                    await stub.Charge(_charge_request(prefix, i), timeout=deadline_s)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                codes[code] = codes.get(code, 0) + 1

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    return codes


async def handled_by_replica(mesh: Mesh, method: str, code: str | None = None) -> dict[str, float]:
    return {r.replica: await handled(r.metrics, method, code) for r in mesh.payments_replicas()}


async def wait_converged(mesh: Mesh, timeout: float = 30.0) -> dict[str, object]:
    async def probe() -> dict[str, object] | None:
        status = await asyncio.to_thread(mesh.status)
        return status if converged(status) else None

    return await eventually(probe, timeout=timeout, what="every proxy ACKs its snapshot")


def _payments_variant(workdir: Path, edit: dict[str, object]) -> Path:
    """payments.yaml with ``spec`` keys replaced, under the same file name (apply replaces)."""
    doc = yaml.safe_load(PAYMENTS_YAML.read_text())
    doc["spec"].update(edit)
    path = workdir / "payments.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def apply_and_converge(mesh: Mesh, path: Path) -> dict[str, Any]:
    """``grpcmesh apply -f path``, then wait for the new config to be ACKed everywhere."""
    before = (await asyncio.to_thread(mesh.status))["config_version"]
    result = await asyncio.to_thread(mesh.apply, path)
    assert result.returncode == 0, result.stderr

    async def probe() -> dict[str, Any] | None:
        status = await asyncio.to_thread(mesh.status)
        return status if status["config_version"] != before and converged(status) else None

    return await eventually(probe, timeout=30, what=f"{path.name} applied and ACKed")


@asynccontextmanager
async def applied(mesh: Mesh, path: Path) -> AsyncIterator[None]:
    """``path`` applied for the duration of the block, then the original payments again."""
    await apply_and_converge(mesh, path)
    try:
        yield
    finally:
        await apply_and_converge(mesh, PAYMENTS_YAML)


@asynccontextmanager
async def payments_config(mesh: Mesh, *keys: str, **values: object) -> AsyncIterator[None]:
    """Replicas' live config changed for the block (and the change seen by the apps)."""
    paths = [Path(mesh.replica(key).config_file) for key in keys]
    metrics = [mesh.replica(key).metrics for key in keys]
    originals = [path.read_text() for path in paths]
    before = [await config_reloads(m) for m in metrics]
    for key in keys:
        mesh.set_config(key, **values)
    try:
        await reloaded(metrics, before, mesh.workers)
        yield
    finally:
        before = [await config_reloads(m) for m in metrics]
        for path, original in zip(paths, originals, strict=True):
            tmp = path.with_name(".config.yaml.tmp")
            tmp.write_text(original)
            tmp.replace(path)
        await reloaded(metrics, before, mesh.workers)


async def failing_directly(mesh: Mesh, key: str) -> None:
    """Prove the injected fault is live: the replica's own port answers UNAVAILABLE."""

    async def probe() -> bool:
        async with payments_stub(mesh.replica(key).app) as stub:
            try:
                await stub.Charge(_charge_request(uuid.uuid4().hex[:8], 0), timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code() is grpc.StatusCode.UNAVAILABLE
        return False

    await eventually(probe, timeout=10, what=f"{key} fails with UNAVAILABLE")


# --- (a) orders through the ingress, every hop through sidecars --------------------------------


async def test_orders_placed_through_the_ingress_traverse_the_sidecars(mesh: Mesh) -> None:
    orders_sidecar = next(r for r in mesh.state.replicas if r.service == "orders").sidecar_admin
    # `up` is ready only once every proxy holds every ready endpoint: a first call right after
    # it never meets "no healthy upstream" (it did while ready meant only "replicas ready").
    healthy = await envoy_stats(orders_sidecar, "membership_healthy")
    for backend in ("catalog|v1", "inventory|v1", "payments|v1", "payments|v2"):
        assert healthy[f"cluster.{backend}.membership_healthy"] > 0, healthy
    ingress = await envoy_stats(mesh.state.ingress_admin, "orders|v1.membership_healthy")
    assert ingress["cluster.orders|v1.membership_healthy"] > 0, ingress
    before = await envoy_stats(orders_sidecar, "upstream_rq_total")

    report = await run_load(mesh.state.ingress, orders=20, rate=10.0, seed=1)

    assert report.succeeded, report.error_samples
    assert report.outcomes == {"CONFIRMED": 20}
    after = await envoy_stats(orders_sidecar, "upstream_rq_total")
    for backend in ("catalog|v1", "inventory|v1"):
        name = f"cluster.{backend}.upstream_rq_total"
        assert after[name] - before.get(name, 0) >= 20, (name, after)
    # The saga's charges went out through orders' sidecar, split over both payments versions'
    # clusters by weight (v2 may see none of 20 at 10%).
    payments = sum(
        after[f"cluster.payments|{v}.upstream_rq_total"]
        - before.get(f"cluster.payments|{v}.upstream_rq_total", 0)
        for v in ("v1", "v2")
    )
    assert payments >= 20
    gateway = await envoy_stats(mesh.state.ingress_admin, "orders|v1.upstream_rq_total")
    assert gateway["cluster.orders|v1.upstream_rq_total"] >= 20


# --- (b) canary split ----------------------------------------------------------------------


async def test_canary_weights_split_calls_across_versions(mesh: Mesh) -> None:
    before = await handled_by_replica(mesh, CHARGE)

    codes = await charges(mesh.state.ingress, 1000)

    assert codes == {"OK": 1000}
    after = await handled_by_replica(mesh, CHARGE)
    served = {replica: after[replica] - before[replica] for replica in after}
    assert sum(served.values()) == 1000
    v2_share = 100 * served["v2-0"] / 1000
    assert 6 <= v2_share <= 14, served  # weight 10, +-4 points
    # Inside v1, round robin spreads the calls over both replicas.
    assert min(served["v1-0"], served["v1-1"]) > 300, served


# --- (c) retries: idempotent methods are retried, others are not ------------------------------


async def payments_retries(admin: str) -> int:
    """Retries of calls routed to either payments version: v1-0 is also in v2's cluster (at
    the failover priority), so a canary marked not ready on a busy machine sends it calls."""
    stats = await envoy_stats(admin, "upstream_rq_retry")
    return sum(stats.get(f"cluster.payments|{v}.upstream_rq_retry", 0) for v in ("v1", "v2"))


async def test_idempotent_charge_is_retried_on_the_healthy_replica(mesh: Mesh) -> None:
    async with payments_config(mesh, "payments/v1-0", failure_rate=1.0, failure_code="UNAVAILABLE"):
        await failing_directly(mesh, "payments/v1-0")
        retries_before = await payments_retries(mesh.state.ingress_admin)
        failed_before = await handled(mesh.replica("payments/v1-0").metrics, CHARGE, "Unavailable")

        codes = await charges(mesh.state.ingress, 200, concurrency=4)

        assert codes == {"OK": 200}
        failed = (
            await handled(mesh.replica("payments/v1-0").metrics, CHARGE, "Unavailable")
            - failed_before
        )
        retries = await payments_retries(mesh.state.ingress_admin)
        assert failed > 0, "the failing replica was never tried"
        assert retries - retries_before >= failed


async def test_non_idempotent_method_is_not_retried(mesh: Mesh, workdir: Path) -> None:
    methods = yaml.safe_load(PAYMENTS_YAML.read_text())["spec"]["methods"]
    charge_unsafe = {"name": "grpcmesh.shop.v1.PaymentService/Charge", "idempotent": False}
    variant = _payments_variant(workdir, {"methods": [*methods, charge_unsafe]})
    async with (
        applied(mesh, variant),
        payments_config(mesh, "payments/v1-0", failure_rate=1.0, failure_code="UNAVAILABLE"),
    ):
        await failing_directly(mesh, "payments/v1-0")
        codes = await charges(mesh.state.ingress, 100, concurrency=4)

    # Round robin over two v1 replicas: about half of v1's ~90% fail, none is retried.
    assert codes.get("UNAVAILABLE", 0) >= 20, codes
    assert set(codes) == {"OK", "UNAVAILABLE"}, codes


# --- (d) per-method timeout ---------------------------------------------------------------------


async def test_method_timeout_yields_deadline_exceeded_at_the_bound(mesh: Mesh) -> None:
    bound_s = 0.6  # spec.methods[Refund].timeout in resources/payments.yaml
    replicas = [f"payments/{r.replica}" for r in mesh.payments_replicas()]
    elapsed, codes = [], []
    async with (
        payments_config(mesh, *replicas, latency_ms=3000),
        payments_stub(mesh.state.ingress) as stub,
    ):
        for i in range(6):
            request = payments_pb2.RefundRequest(
                idempotency_key=f"refund-{uuid.uuid4().hex[:8]}", payment_id=f"pay_none{i}"
            )
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.Refund(request, timeout=10)  # not the client's deadline: the route's
            elapsed.append(time.monotonic() - started)
            codes.append(failure.value.code())
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    assert all(0.8 * bound_s <= t <= 1.2 * bound_s for t in elapsed), elapsed


# --- (e) outlier detection ------------------------------------------------------------------


async def test_outlier_detection_ejects_the_failing_replica(mesh: Mesh, workdir: Path) -> None:
    methods = yaml.safe_load(PAYMENTS_YAML.read_text())["spec"]["methods"]
    variant = _payments_variant(
        workdir,
        {
            # No retries for Charge, so what the client sees is what the replica answered.
            "methods": [
                *methods,
                {"name": "grpcmesh.shop.v1.PaymentService/Charge", "idempotent": False},
            ],
            "trafficPolicy": {
                **yaml.safe_load(PAYMENTS_YAML.read_text())["spec"]["trafficPolicy"],
                "outlierDetection": {
                    "consecutiveGatewayFailure": 3,
                    "interval": "1s",
                    "baseEjectionTime": "60s",
                    "maxEjectionPercent": 50,
                },
            },
        },
    )
    ejections = "cluster.payments|v1.outlier_detection.ejections_enforced_total"
    async with (
        applied(mesh, variant),
        payments_config(mesh, "payments/v1-0", failure_rate=1.0, failure_code="UNAVAILABLE"),
    ):
        await failing_directly(mesh, "payments/v1-0")
        first = await charges(mesh.state.ingress, 40, concurrency=1)
        stats = await envoy_stats(mesh.state.ingress_admin, "outlier_detection")
        before = await handled_by_replica(mesh, CHARGE)
        then = await charges(mesh.state.ingress, 100, concurrency=4)
        after = await handled_by_replica(mesh, CHARGE)

    # Three failures in a row on the bad replica eject it; a few more may be in flight.
    assert 3 <= first.get("UNAVAILABLE", 0) <= 6, first
    assert stats.get(ejections, 0) >= 1, stats
    assert then == {"OK": 100}
    assert after["v1-0"] == before["v1-0"], "the ejected replica still got calls"
    assert after["v1-1"] - before["v1-1"] >= 70


# --- (f) live apply under load -----------------------------------------------------------


async def _load(mesh: Mesh, orders: int, rate: float) -> LoadReport:
    return await run_load(mesh.state.ingress, orders=orders, rate=rate, deadline_s=10.0)


async def test_live_apply_under_load_loses_no_call(mesh: Mesh, workdir: Path) -> None:
    before = proxies(await wait_converged(mesh))
    variant = _payments_variant(
        workdir,
        {
            "versions": [
                {"name": "v1", "weight": 50, "replicas": 2},
                {"name": "v2", "weight": 50, "replicas": 1},
            ]
        },
    )
    async with asyncio.TaskGroup() as group:
        load = group.create_task(_load(mesh, orders=100, rate=12.5))
        await asyncio.sleep(2.0)
        after = proxies(await apply_and_converge(mesh, variant))
    report = load.result()
    await apply_and_converge(mesh, PAYMENTS_YAML)
    assert report.succeeded, (report.statuses, report.error_samples)
    # Callers of payments (orders' sidecar, the gateway) hold a new config; every one ACKed.
    orders_node = next(n for n in after if n.startswith("sidecar~orders~"))
    for node in (orders_node, "ingress~gateway"):
        assert after[node]["acked_version"] != before[node]["acked_version"], node


# --- (g) control plane killed under load -----------------------------------------------------


async def test_control_plane_killed_under_load_loses_no_call(mesh: Mesh) -> None:
    before = proxies(await wait_converged(mesh))
    state = mesh.state
    assert state.control_plane_pid is not None
    victim = psutil.Process(state.control_plane_pid)
    async with asyncio.TaskGroup() as group:
        load = group.create_task(_load(mesh, orders=100, rate=12.5))
        await asyncio.sleep(2.0)
        os.kill(victim.pid, signal.SIGKILL)

        async def restarted() -> bool:
            now = mesh.state
            return (
                now.control_plane_restarts == state.control_plane_restarts + 1
                and now.control_plane_pid not in (None, victim.pid)
            )

        await eventually(restarted, timeout=15, what="the control plane restarts")
        after = proxies(await wait_converged(mesh, timeout=45))
    report = load.result()
    assert report.succeeded, (report.statuses, report.error_samples)
    # Content-hash versions: the restarted control plane serves what the old one did.
    assert {n: p["acked_version"] for n, p in after.items()} == {
        n: p["acked_version"] for n, p in before.items()
    }


# --- (h) invalid resources are refused, and nothing changes ------------------------------------


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_apply_refuses_invalid_resources_and_changes_nothing(
    mesh: Mesh, workdir: Path, case: str
) -> None:
    path, field = invalid_resource(case, workdir)
    name = path.name
    files_before = mesh.resource_files()
    status_before = await wait_converged(mesh)

    result = await asyncio.to_thread(mesh.apply, path)

    assert result.returncode == 1, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    assert message.startswith("error: refused: "), message
    assert name in message and field in message, message
    assert mesh.resource_files() == files_before
    await asyncio.sleep(0.5)  # a change would have been debounced and pushed by now
    status_after = await wait_converged(mesh)
    assert status_after["config_version"] == status_before["config_version"]
    assert {n: p["acked_version"] for n, p in proxies(status_after).items()} == {
        n: p["acked_version"] for n, p in proxies(status_before).items()
    }


# --- metrics pages --------------------------------------------------------------------------


def _page(address: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
        text: str = response.read().decode()
    return text


async def test_every_metrics_page_passes_promtool(mesh: Mesh) -> None:
    """Each app's /metrics and the control plane's /metrics lint clean; Envoy's own
    /stats/prometheus is well-formed exposition (its names are Envoy's: no _total suffix or
    HELP lines, which promtool's lint would flag, so it is parsed rather than linted)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make sysdeps` installs it"
    await charges(mesh.state.ingress, 20)
    state = mesh.state
    pages = [(r.metrics, "/metrics") for r in state.replicas]
    pages.append((state.control_plane_admin, "/metrics"))
    for address, path in pages:
        text = await asyncio.to_thread(_page, address, path)
        assert text.strip(), f"{address}{path} is empty"
        result = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, f"{address}{path}: {result.stdout}{result.stderr}"
    for admin in [*(r.sidecar_admin for r in state.replicas), state.ingress_admin]:
        text = await asyncio.to_thread(_page, admin, "/stats/prometheus")
        families = list(text_string_to_metric_families(text))
        assert any(f.name.startswith("envoy_cluster_upstream_rq") for f in families), admin
