"""A running local mesh follows ``grpcmesh apply`` and ``delete`` with processes, and keeps its
processes running as a kubelet would (real Envoys, real apps, the real CLI).

Its own small mesh (catalog, and payments with one replica, exposed at the ingress): starting
and stopping replicas is what these tests change, so they do not share the module mesh of
``test_mesh``. Each test leaves the mesh as it found it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import yaml
from google.protobuf import descriptor_pb2

from grpcmesh.shop.v1 import (
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    payments_pb2,
    payments_pb2_grpc,
)
from grpcmesh_control.local import credential
from tests.e2e.harness import RESOURCES, Mesh, converged, eventually, grpcmesh

pytestmark = pytest.mark.slow


def _payments(**spec: object) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((RESOURCES / "payments.yaml").read_text())
    doc["spec"].update(spec)
    return doc


ONE_V1 = {"versions": [{"name": "v1", "weight": 100, "replicas": 1}]}
CANARY = {
    "versions": [
        {"name": "v1", "weight": 90, "replicas": 1},
        {"name": "v2", "weight": 10, "replicas": 1},
    ]
}


@pytest.fixture(scope="module")
def small_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    resources = tmp_path_factory.mktemp("live-resources")
    (resources / "catalog.yaml").write_text((RESOURCES / "catalog.yaml").read_text())
    (resources / "payments.yaml").write_text(yaml.safe_dump(_payments(**ONE_V1)))
    mesh = Mesh(tmp_path_factory.mktemp("live") / "run", resources)
    mesh.start()
    try:
        yield mesh
    finally:
        assert mesh.stop() == 128 + signal.SIGTERM, mesh.log.read_text()[-3000:]


def _write(directory: Path, name: str, doc: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _apply(mesh: Mesh, path: Path) -> list[str]:
    """``grpcmesh apply -f``: succeeds, and returns what it reported after ``applied``."""
    result = mesh.apply(path)
    assert result.returncode == 0, (result.stdout, result.stderr, mesh.log.read_text()[-3000:])
    lines = result.stdout.splitlines()
    assert lines[0] == f"applied {path}", lines
    return lines[1:]


def _restore(mesh: Mesh, workdir: Path) -> None:
    _apply(mesh, _write(workdir, "payments.yaml", _payments(**ONE_V1)))


def _charge(prefix: str, i: int) -> payments_pb2.ChargeRequest:
    return payments_pb2.ChargeRequest(
        idempotency_key=f"{prefix}-{i}",
        order_id=f"order-{prefix}-{i}",
        customer_id="customer-live",
        amount=common_pb2.Money(currency_code="USD", amount_minor=100 + i),
    )


async def open_loop_charges(address: str, rate: float, stop: asyncio.Event) -> Counter[str]:
    """Charge calls sent at ``rate`` per second whatever the answers (open loop: a slow or
    failing mesh does not slow the sender down) until ``stop``; the calls by status code."""
    prefix = uuid.uuid4().hex[:8]
    codes: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)

        async def one(i: int) -> None:
            try:
                await stub.Charge(_charge(prefix, i), timeout=10)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1

        async with asyncio.TaskGroup() as group:
            start, i = loop.time(), 0
            while not stop.is_set():
                group.create_task(one(i))
                i += 1
                # The schedule, not a wait for a condition: call i+1 leaves at start + (i+1)/rate.
                await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
    return codes


async def _converged(mesh: Mesh) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status = await asyncio.to_thread(mesh.status)
        return status if converged(status) else None

    return await eventually(probe, timeout=45, what="every proxy ACKs its snapshot")


def _versions(status: dict[str, Any], service: str) -> dict[str, dict[str, Any]]:
    found = next(s for s in status["services"] if s["name"] == service)
    return {v["name"]: v for v in found["versions"]}


# --- live apply ----------------------------------------------------------------------------------


async def test_a_canary_applied_under_open_loop_load_fails_no_call(
    small_mesh: Mesh, workdir: Path
) -> None:
    mesh = small_mesh
    await _converged(mesh)
    ingress = mesh.state.ingress
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group:
            load = group.create_task(open_loop_charges(ingress, rate=20.0, stop=stop))
            report = await asyncio.to_thread(
                _apply, mesh, _write(workdir, "payments.yaml", _payments(**CANARY))
            )
            # Once v2 is ready its share of the calls goes there: keep calling for a while.
            v2 = mesh.replica("payments/v2-0")
            before = await _handled(v2.metrics)

            async def v2_serves() -> bool:
                return await _handled(v2.metrics) >= before + 3

            await eventually(v2_serves, timeout=30, what="v2 takes its share of the calls")
            stop.set()
        codes = load.result()
        assert report == ["started payments/v2-0 (ready)"], report
        assert set(codes) == {"OK"}, codes
        assert codes["OK"] >= 40, codes
        status = await asyncio.to_thread(mesh.status)
        assert _versions(status, "payments") == {
            "v1": {"name": "v1", "weight": 90, "replicas": 1, "ready": 1},
            "v2": {"name": "v2", "weight": 10, "replicas": 1, "ready": 1},
        }
    finally:
        stop.set()
        _restore(mesh, workdir)
    # The canary's processes are gone: drained, then stopped.
    assert [r.replica for r in mesh.payments_replicas()] == ["v1-0"]


async def _handled(metrics: str) -> float:
    from tests.scrape import scrape, value

    return value(await scrape(metrics), "grpc_server_handled_total", grpc_method="Charge")


async def test_replica_count_and_a_version_without_endpoints_show_in_apply_and_status(
    small_mesh: Mesh, workdir: Path
) -> None:
    mesh = small_mesh
    first_pid = mesh.replica("payments/v1-0").app_pid
    two = {
        "versions": [
            {"name": "v1", "weight": 90, "replicas": 2},
            # Declared with weight but nothing to run it: a problem, and its share moves.
            {"name": "v2", "weight": 10, "replicas": 0},
        ]
    }
    try:
        report = _apply(mesh, _write(workdir, "payments.yaml", _payments(**two)))
        assert report == ["started payments/v1-1 (ready)"]
        assert mesh.replica("payments/v1-0").app_pid == first_pid  # untouched
        status = await _converged(mesh)
        assert _versions(status, "payments")["v2"] == {
            "name": "v2",
            "weight": 10,
            "replicas": 0,
            "ready": 0,
        }
        assert (
            "MeshService default/payments: version v2 (weight 10) has no ready endpoint: "
            "its share goes to the other versions"
        ) in status["problems"]
        codes = await _charges_through(mesh.state.ingress, 30)
        assert codes == {"OK": 30}, codes  # nothing routed to the empty version
    finally:
        _restore(mesh, workdir)
    assert [r.replica for r in mesh.payments_replicas()] == ["v1-0"]
    assert mesh.replica("payments/v1-0").app_pid == first_pid
    assert (await asyncio.to_thread(mesh.status))["problems"] == []


async def _charges_through(address: str, count: int) -> Counter[str]:
    prefix = uuid.uuid4().hex[:8]
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        for i in range(count):
            try:
                await stub.Charge(_charge(prefix, i), timeout=10)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
    return codes


async def test_spec_config_applied_reaches_the_running_replica(
    small_mesh: Mesh, workdir: Path
) -> None:
    mesh = small_mesh
    replica = mesh.replica("payments/v1-0")
    failing = _payments(**ONE_V1)
    failing["spec"]["config"] = {"failure_rate": "1.0", "failure_code": "UNAVAILABLE"}
    try:
        report = _apply(mesh, _write(workdir, "payments.yaml", failing))
        assert report == ["reconfigured payments/v1-0"]

        async def sees_it() -> bool:
            codes = await _charges_through(replica.app, 1)  # the app's own port
            return codes == {"UNAVAILABLE": 1}

        await eventually(sees_it, timeout=15, what="the replica fails as its new config says")
        assert mesh.replica("payments/v1-0").app_pid == replica.app_pid  # reloaded, not restarted
    finally:
        _restore(mesh, workdir)

    async def recovered() -> bool:
        return await _charges_through(replica.app, 1) == {"OK": 1}

    await eventually(recovered, timeout=15, what="the replica takes the restored config")


async def test_a_new_service_is_started_called_and_deleted(small_mesh: Mesh, workdir: Path) -> None:
    mesh = small_mesh
    inventory = yaml.safe_load((RESOURCES / "inventory.yaml").read_text())
    inventory["spec"]["expose"] = True
    report = _apply(mesh, _write(workdir, "inventory.yaml", inventory))
    assert report == ["started inventory/v1-0 (ready)"]
    status = await _converged(mesh)
    assert [e["ready"] for e in _service(status, "inventory")["endpoints"]] == [True]
    async with grpc.aio.insecure_channel(mesh.state.ingress) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        reply = await stub.GetStock(
            inventory_pb2.GetStockRequest(product_id="sku-0001"), timeout=10
        )
    assert reply.stock.product_id == "sku-0001"

    pids = [
        p
        for r in mesh.state.replicas
        if r.service == "inventory"
        for p in (r.app_pid, r.sidecar_pid)
    ]
    result = grpcmesh("delete", "inventory", "--state-dir", str(mesh.run_dir), timeout=150)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.splitlines() == ["deleted inventory", "stopped inventory/v1-0"]
    assert "inventory" not in [
        s["name"] for s in (await asyncio.to_thread(mesh.status))["services"]
    ]
    assert not [p for p in pids if p is not None and psutil.pid_exists(p) and _not_zombie(p)]


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _service(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in status["services"] if s["name"] == name)
    return found


async def test_deleting_a_service_another_calls_is_refused(small_mesh: Mesh) -> None:
    before = small_mesh.resource_files()
    result = grpcmesh("delete", "nosuch", "--state-dir", str(small_mesh.run_dir))
    assert result.returncode == 1
    assert "no MeshService 'nosuch' (known: catalog, payments)" in " ".join(result.stderr.split())
    assert small_mesh.resource_files() == before


def _reviews_set() -> bytes:
    proto = descriptor_pb2.FileDescriptorProto(
        name="acme/reviews/v1/reviews.proto", package="acme.reviews.v1", syntax="proto3"
    )
    proto.message_type.add(name="Review")
    service = proto.service.add(name="ReviewService")
    service.method.add(
        name="GetReviews",
        input_type=".acme.reviews.v1.Review",
        output_type=".acme.reviews.v1.Review",
    )
    return descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString()


def test_apply_sends_descriptor_sets_and_is_refused_whole_for_a_bad_one(
    small_mesh: Mesh, workdir: Path
) -> None:
    """``--descriptors`` (a file, or a folder) goes with the resource: a corrupt set is refused
    naming it, and a good set's methods check the resource's ``spec.methods``."""
    reviews = {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": "reviews"},
        "spec": {
            "grpc": {"port": 50051, "services": ["acme.reviews.v1.ReviewService"]},
            "workload": {"image": "acme/reviews:1", "command": ["python", "-m", "acme_reviews"]},
            "methods": [{"name": "acme.reviews.v1.ReviewService/GetReveiws", "timeout": "1s"}],
        },
    }
    resource = _write(workdir, "reviews.yaml", reviews)
    (workdir / "bad").mkdir()
    (workdir / "bad" / "broken.binpb").write_bytes(b"not a descriptor set\xff")
    (workdir / "protos").mkdir()
    (workdir / "protos" / "reviews.binpb").write_bytes(_reviews_set())
    before = sorted(p.name for p in (small_mesh.run_dir / "resources").iterdir())

    def apply(descriptors: Path) -> subprocess.CompletedProcess[str]:
        args = ("-f", str(resource), "--descriptors", str(descriptors))
        return grpcmesh("apply", *args, "--state-dir", str(small_mesh.run_dir), timeout=150)

    corrupt = apply(workdir / "bad" / "broken.binpb")
    assert corrupt.returncode == 1, corrupt.stdout
    assert "refused: broken.binpb: not a serialized FileDescriptorSet" in corrupt.stderr
    typo = apply(workdir / "protos")  # the folder's sets
    assert typo.returncode == 1, typo.stdout
    assert (
        "spec.methods[0].name: acme.reviews.v1.ReviewService has no method GetReveiws "
        "(it has: GetReviews)" in " ".join(typo.stderr.split())
    )
    assert sorted(p.name for p in (small_mesh.run_dir / "resources").iterdir()) == before
    assert "reviews" not in [s["name"] for s in small_mesh.status()["services"]]


# --- the credential ------------------------------------------------------------------------------


def _request(url: str, *, token: str | None, data: bytes | None = None) -> tuple[int, str]:
    headers = {"X-Filename": "payments.yaml"} | ({} if token is None else credential.headers(token))
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_control_plane_refuses_apply_and_debug_without_the_credential(
    small_mesh: Mesh,
) -> None:
    run_dir = small_mesh.run_dir
    path = run_dir / credential.CREDENTIAL_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    token = credential.read(run_dir)
    base = f"http://{small_mesh.state.control_plane_admin}"
    before = small_mesh.resource_files()
    body = (RESOURCES / "catalog.yaml").read_bytes()
    for who in (None, "wrong-" + token):
        status, text = _request(f"{base}/apply", token=who, data=body)
        assert status == 401 and "credential" in text, (status, text)
        for path_ in ("/debug/nodes", "/debug/snapshot?node=sidecar~catalog~v1-0"):
            assert _request(base + path_, token=who)[0] == 401
    assert small_mesh.resource_files() == before
    assert _request(f"{base}/debug/nodes", token=token)[0] == 200
    for open_path in ("/healthz", "/status", "/metrics"):
        assert _request(base + open_path, token=None)[0] == 200


# --- the supervisor ------------------------------------------------------------------------------


async def test_killed_app_sidecar_and_control_plane_come_back(small_mesh: Mesh) -> None:
    mesh = small_mesh
    await _converged(mesh)
    state = mesh.state
    catalog = mesh.replica("catalog/v1-0")
    payments = mesh.replica("payments/v1-0")
    assert catalog.app_pid and payments.sidecar_pid and state.control_plane_pid
    os.kill(catalog.app_pid, signal.SIGKILL)
    os.kill(payments.sidecar_pid, signal.SIGKILL)
    os.kill(state.control_plane_pid, signal.SIGKILL)

    async def back() -> bool:
        now = mesh.state
        c, p = mesh.replica("catalog/v1-0"), mesh.replica("payments/v1-0")
        return (
            c.ready
            and p.ready
            and c.app_restarts == catalog.app_restarts + 1
            and c.app_pid not in (None, catalog.app_pid)
            and p.sidecar_restarts == payments.sidecar_restarts + 1
            and p.sidecar_pid not in (None, payments.sidecar_pid)
            and now.control_plane_restarts == state.control_plane_restarts + 1
            and now.control_plane_pid not in (None, state.control_plane_pid)
        )

    await eventually(back, timeout=30, what="the app, the sidecar and the control plane restart")
    status = await _converged(mesh)
    endpoint = _service(status, "catalog")["endpoints"][0]
    assert endpoint["restarts"]["app"] == catalog.app_restarts + 1
    assert status["control_plane_restarts"] == state.control_plane_restarts + 1
    assert await _charges_through(mesh.state.ingress, 5) == {"OK": 5}


async def test_a_hung_control_plane_is_killed_and_restarted(small_mesh: Mesh) -> None:
    mesh = small_mesh
    state = mesh.state
    assert state.control_plane_pid is not None
    started = time.monotonic()
    os.kill(state.control_plane_pid, signal.SIGSTOP)  # alive, answering nothing

    async def replaced() -> bool:
        now = mesh.state
        return now.control_plane_restarts == state.control_plane_restarts + 1 and (
            now.control_plane_pid not in (None, state.control_plane_pid)
        )

    await eventually(replaced, timeout=30, what="the hung control plane is replaced")
    # Three missed probes a second apart, not sooner (a slow answer is not a hang).
    assert time.monotonic() - started >= 2.5
    assert not _not_zombie(state.control_plane_pid)
    # The sidecars kept their config meanwhile and ACK the restarted one's.
    await _converged(mesh)
    assert await _charges_through(mesh.state.ingress, 5) == {"OK": 5}
