"""Local mode wires proxyless gRPC end to end: ``orders`` with ``spec.proxyless: true`` is told
its xDS bootstrap by ``grpcmesh up``, the kit's channels dial ``xds:///catalog`` (and
inventory, payments) through gRPC's own xDS client, and orders are placed through the ingress
without a single call crossing orders' egress sidecar, while the backends' sidecars serve them.
The mesh keeps secured xDS: orders' gRPC proves its node to the control plane over TLS with the
token (a JWT) in its replica's ``xds-token`` file, and nothing is refused.

Its own mesh (one replica each): the module mesh of ``test_mesh`` routes orders through its
sidecar, which other tests count on."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpcmesh_control.local.mesh_ca import BUNDLE_FILE
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_loadgen import run_load
from tests.e2e.harness import RESOURCES, Mesh, envoy_stats, eventually
from tests.e2e.test_mesh import wait_converged

pytestmark = pytest.mark.slow

ORDERS = 12


@pytest.fixture(scope="module")
def proxyless_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    resources = tmp_path_factory.mktemp("proxyless-resources")
    for name in ("catalog", "inventory", "payments", "orders"):
        doc = yaml.safe_load((RESOURCES / f"{name}.yaml").read_text())
        doc["spec"]["versions"] = [{"name": "v1", "weight": 100, "replicas": 1}]
        if name == "orders":
            doc["spec"]["proxyless"] = True
        else:  # orders' calls are plaintext (no certificate providers yet): accepted here
            doc["spec"]["mtls"] = {"mode": "PERMISSIVE"}
        (resources / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    mesh = Mesh(tmp_path_factory.mktemp("proxyless") / "run", resources)
    mesh.start()
    try:
        yield mesh
    finally:
        assert mesh.stop() == 128 + signal.SIGTERM, mesh.log.read_text()[-3000:]


def _app_env(mesh: Mesh, key: str) -> dict[str, str]:
    """The environment ``grpcmesh up`` started a replica's app with (from /proc)."""
    pid = mesh.replica(key).app_pid
    assert pid is not None
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if b"=" in item)


async def test_orders_placed_with_a_proxyless_orders_skip_its_egress_sidecar(
    proxyless_mesh: Mesh,
) -> None:
    mesh = proxyless_mesh
    orders = mesh.replica("orders/v1-0")
    bootstrap = json.loads(_app_env(mesh, "orders/v1-0")["GRPCMESH_XDS_BOOTSTRAP"])
    node = bootstrap["node"]
    assert ProxyNode.from_node(node["id"], node["metadata"]).id == NodeId.proxyless(
        "orders", "v1-0"
    )
    assert "GRPCMESH_XDS_BOOTSTRAP" not in _app_env(mesh, "payments/v1-0")
    # Secured xDS: TLS to the control plane (the trusted roots) and the node's own token file.
    (server,) = bootstrap["xds_servers"]
    assert server["channel_creds"] == [
        {"type": "tls", "config": {"ca_certificate_file": str(mesh.run_dir / BUNDLE_FILE)}}
    ]
    ((creds),) = server["call_creds"]
    token_file = Path(creds["config"]["jwt_token_file"])
    assert token_file == mesh.run_dir / "orders" / "v1-0" / "xds-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert _app_env(mesh, "orders/v1-0")["GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"] == "true"
    assert "xDS authentication is off" not in mesh.log.read_text()

    await wait_converged(mesh)  # the ingress routes to orders only once it has ACKed
    report = await run_load(mesh.state.ingress, ORDERS, 4.0, deadline_s=10.0)
    assert report.statuses == {"OK": ORDERS}, report.error_samples
    assert sum(report.outcomes.values()) == ORDERS

    egress = await envoy_stats(orders.sidecar_admin, "http.egress.downstream_rq_total")
    assert egress == {"http.egress.downstream_rq_total": 0}  # not one call went through it
    inbound = await envoy_stats(orders.sidecar_admin, "http.inbound.downstream_rq_total")
    assert inbound["http.inbound.downstream_rq_total"] >= ORDERS  # the ingress's calls
    # Every order reads the catalog; one that is refused (say, out of stock) charges nothing.
    # Either way each backend's own sidecar served orders' calls.
    for backend in ("catalog", "inventory", "payments"):
        admin = mesh.replica(f"{backend}/v1-0").sidecar_admin
        served = await envoy_stats(admin, "http.inbound.downstream_rq_total")
        assert served["http.inbound.downstream_rq_total"] >= 1, backend

    # The proxyless node was served as itself, and no one was refused on the way.
    admin = mesh.state.control_plane_admin
    status = json.loads(_get(f"http://{admin}/status"))
    (proxyless,) = [
        n for n in status["nodes"] if n["id"] == str(NodeId.proxyless("orders", "v1-0"))
    ]
    assert proxyless["connected"] and proxyless["acked_version"] == proxyless["snapshot_version"]
    metrics = _get(f"http://{admin}/metrics").splitlines()
    for reason in ("unauthenticated", "wrong_node"):
        series = f'grpcmesh_xds_refusals_total{{reason="{reason}"}} '
        assert [float(m.removeprefix(series)) for m in metrics if m.startswith(series)] == [0.0]


async def test_a_proxyless_replica_started_by_a_live_apply_proves_its_own_node(
    proxyless_mesh: Mesh, tmp_path: Path
) -> None:
    """``grpcmesh apply`` of a second orders replica to the running secured mesh: the launcher
    writes its own token file, and its gRPC is served as ``proxyless~orders~v1-1``."""
    mesh = proxyless_mesh
    doc = yaml.safe_load((mesh.run_dir / "resources" / "orders.yaml").read_text())
    doc["spec"]["versions"][0]["replicas"] = 2
    (tmp_path / "orders.yaml").write_text(yaml.safe_dump(doc))
    result = mesh.apply(tmp_path / "orders.yaml")
    assert result.returncode == 0, result.stderr

    token_file = mesh.run_dir / "orders" / "v1-1" / "xds-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text() != (mesh.run_dir / "orders" / "v1-0" / "xds-token").read_text()
    await wait_converged(mesh)
    # The kit dials xds:/// at its first call: orders through the ingress reach both replicas.
    report = await run_load(mesh.state.ingress, ORDERS, 4.0, deadline_s=10.0)
    assert report.statuses == {"OK": ORDERS}, report.error_samples
    admin = mesh.state.control_plane_admin
    node_id = str(NodeId.proxyless("orders", "v1-1"))

    async def served() -> dict[str, Any] | None:
        status = json.loads(await asyncio.to_thread(_get, f"http://{admin}/status"))
        node: dict[str, Any] | None = next((n for n in status["nodes"] if n["id"] == node_id), None)
        if node is None or not node["connected"] or node["acked_version"] is None:
            return None
        return node if node["acked_version"] == node["snapshot_version"] else None

    await eventually(served, timeout=30, what=f"{node_id} connected and ACKed")
    metrics = (await asyncio.to_thread(_get, f"http://{admin}/metrics")).splitlines()
    for reason in ("unauthenticated", "wrong_node"):
        series = f'grpcmesh_xds_refusals_total{{reason="{reason}"}} '
        assert [float(m.removeprefix(series)) for m in metrics if m.startswith(series)] == [0.0]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text
