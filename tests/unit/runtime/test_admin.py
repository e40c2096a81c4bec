"""The admin HTTP API over the control plane's real parts (no xDS server, no Envoy): status,
apply, the snapshot dump and metrics, on an in-process aiohttp test server (loopback)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from grpcmesh_control.host.xds_host import REDACTED
from grpcmesh_control.local import credential
from grpcmesh_control.local.controlplane import ControlPlane, ControlPlaneSettings
from grpcmesh_control.mesh.model import MethodCatalog
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_control.mesh.translate.versioned import SECRET
from grpcmesh_control.mesh.xds import CLUSTER, LISTENER

ORDERS = "sidecar~orders~0"


@pytest.fixture
def state_dir(tmp_path: Path, example_files: dict[str, bytes]) -> Path:
    (tmp_path / "resources").mkdir()
    for name, content in example_files.items():
        (tmp_path / "resources" / name).write_bytes(content)
    return tmp_path


@pytest.fixture
def control_plane(state_dir: Path, catalog: MethodCatalog) -> ControlPlane:
    cp = ControlPlane(ControlPlaneSettings(state_dir), catalog=catalog)
    cp.sources.reload()
    cp.publisher.rebuild()
    return cp


@pytest.fixture
async def client(control_plane: ControlPlane) -> AsyncIterator[TestClient[Any, Any]]:
    cp = control_plane
    app = cp.http_app()
    token = credential.read(cp.settings.state_dir)  # http_app created it
    server = TestServer(app, host="127.0.0.1")
    async with TestClient(server, headers=credential.headers(token)) as test_client:
        yield test_client


@pytest.fixture
async def stranger(control_plane: ControlPlane) -> AsyncIterator[TestClient[Any, Any]]:
    """A client without the credential."""
    async with TestClient(TestServer(control_plane.http_app(), host="127.0.0.1")) as test_client:
        yield test_client


async def get_json(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    return await response.json()


async def test_healthz(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz")
    assert response.status == 200


async def test_status_before_any_node(
    client: TestClient[Any, Any], control_plane: ControlPlane
) -> None:
    status = await get_json(client, "/status")
    assert status["version"] == status["inputs_version"] == control_plane.publisher.version
    assert status["problems"] == []
    assert status["nodes"] == []
    orders = next(s for s in status["services"] if s["name"] == "orders")
    assert orders == {
        "name": "orders",
        "namespace": "default",
        "file": "orders.yaml",
        "expose": True,
        "versions": [{"name": "v1", "weight": 100}],
        "endpoints": {"total": 0, "ready": 0},
    }


async def test_status_of_a_node_through_ack_and_nack(
    client: TestClient[Any, Any], control_plane: ControlPlane
) -> None:
    cache = control_plane.cache
    metadata = ProxyNode(NodeId.sidecar("orders", "0")).metadata()
    cache.connected(ORDERS, metadata)
    snapshot = cache.config_snapshot(ORDERS)
    assert snapshot is not None
    (node,) = (await get_json(client, "/status"))["nodes"]
    assert node["id"] == ORDERS
    assert node["connected"] is True
    assert node["connected_since"].endswith("+00:00")
    assert (node["acked_version"], node["snapshot_version"]) == (None, snapshot.version)
    assert node["nack"] is None and node["problem"] is None

    watched = {CLUSTER, LISTENER}
    for type_url in watched:
        cache.record_ack(ORDERS, type_url, snapshot.of(type_url).version, set(map(str, watched)))
    (node,) = (await get_json(client, "/status"))["nodes"]
    assert node["acked_version"] == node["snapshot_version"] == snapshot.version

    cache.record_nack(ORDERS, CLUSTER, "bad", "cluster x: no good")
    (node,) = (await get_json(client, "/status"))["nodes"]
    assert node["nack"]["type_url"] == CLUSTER
    assert (node["nack"]["version"], node["nack"]["message"]) == ("bad", "cluster x: no good")


async def test_replicas_sharing_a_snapshot_report_their_own_acks(
    client: TestClient[Any, Any], control_plane: ControlPlane
) -> None:
    cache = control_plane.cache
    replicas = [NodeId.sidecar("orders", str(r)) for r in range(2)]
    for node_id in replicas:
        cache.connected(str(node_id), ProxyNode(node_id).metadata())
    group = cache.snapshot(cache.group_of(str(replicas[0])))
    assert group is not None and cache.snapshot(cache.group_of(str(replicas[1]))) is group
    # Each replica's view: the shared group snapshot and its own certificate (SDS).
    views = []
    for replica in replicas:
        view = cache.node_snapshot(str(replica))
        assert view is not None
        views.append(view)
    for view in views:
        assert all(view.of(t) is group.of(t) for t in group.by_type)
    assert views[0].of(SECRET).version != views[1].of(SECRET).version
    snapshot = views[0]
    for type_url in (CLUSTER, LISTENER):
        cache.record_ack(str(replicas[0]), type_url, snapshot.of(type_url).version, {type_url})
    nodes = (await get_json(client, "/debug/nodes"))["nodes"]
    assert [n["id"] for n in nodes] == [str(n) for n in replicas]
    assert nodes[0]["group"] == nodes[1]["group"]
    # The config they converge on is the shared one; their secrets are reported apart.
    assert [n["snapshot_version"] for n in nodes] == [group.version] * 2
    assert [n["acked_version"] for n in nodes] == [group.version, None]
    assert [n["secrets"]["version"] for n in nodes] == [v.of(SECRET).version for v in views]
    assert [n["secrets"]["acked"] for n in nodes] == [False, False]


async def test_status_reports_problems_of_sources_and_nodes(
    client: TestClient[Any, Any], control_plane: ControlPlane, state_dir: Path
) -> None:
    (state_dir / "endpoints.json").write_text('{"endpoints": [{"service": 1}]}')
    control_plane.sources.reload()
    control_plane.cache.connected("sidecar~shipping~0", {})
    status = await get_json(client, "/status")
    assert any(p.startswith("endpoints.json: endpoints[0].address") for p in status["problems"])
    (node,) = status["nodes"]
    assert node["snapshot_version"] is None
    assert node["problem"] == "node sidecar~shipping~0: no MeshService shipping"


async def test_apply_refused_with_400_naming_file_and_field(
    client: TestClient[Any, Any], state_dir: Path, example_files: dict[str, bytes]
) -> None:
    before = sorted((p.name, p.read_bytes()) for p in (state_dir / "resources").iterdir())
    bad = example_files["payments.yaml"].replace(b"weight: 10", b"weight: 0")
    response = await client.post("/apply", data=bad, headers={"X-Filename": "payments.yaml"})
    assert response.status == 400
    body = await response.json()
    assert body["error"] == (
        "payments.yaml (MeshService default/payments): spec.versions: weights sum to 90, "
        "must be 100"
    )
    assert body["problems"] == [body["error"]]
    after = sorted((p.name, p.read_bytes()) for p in (state_dir / "resources").iterdir())
    assert after == before


async def test_apply_without_a_file_name(
    client: TestClient[Any, Any], example_files: dict[str, bytes]
) -> None:
    response = await client.post("/apply", data=example_files["payments.yaml"])
    assert response.status == 400
    assert (await response.json())["error"] == "X-Filename: header is missing"


async def test_apply_accepted(
    client: TestClient[Any, Any],
    control_plane: ControlPlane,
    state_dir: Path,
    example_files: dict[str, bytes],
) -> None:
    content = example_files["payments.yaml"].replace(b"weight: 90", b"weight: 80")
    content = content.replace(b"weight: 10", b"weight: 20")
    response = await client.post("/apply", data=content, headers={"X-Filename": "payments.yaml"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["file"] == "payments.yaml"
    assert body["applied"] == ["default/payments"]
    assert body["removed"] == []
    assert (state_dir / "resources" / "payments.yaml").read_bytes() == content
    # The version the next rebuild will report; rebuilding now, /status shows it.
    assert body["version"] != control_plane.publisher.version
    # Until then /status says the newest inputs are not built: their counts are not served yet.
    pending = await get_json(client, "/status")
    assert (pending["version"], pending["inputs_version"]) == (
        control_plane.publisher.version,
        body["version"],
    )
    control_plane.publisher.rebuild()
    built = await get_json(client, "/status")
    assert built["version"] == built["inputs_version"] == body["version"]


async def test_debug_snapshot(client: TestClient[Any, Any], control_plane: ControlPlane) -> None:
    control_plane.cache.connected(ORDERS, ProxyNode(NodeId.sidecar("orders", "0")).metadata())
    dump = await get_json(client, f"/debug/snapshot?node={ORDERS}")
    snapshot = control_plane.cache.node_snapshot(ORDERS)
    assert snapshot is not None
    assert dump["node"] == ORDERS
    assert dump["version"] == snapshot.version
    listeners = dump["resources"][LISTENER]
    assert listeners["version"] == snapshot.of(LISTENER).version
    assert sorted(r["name"] for r in listeners["resources"]) == ["egress", "inbound"]
    assert all(
        r["@type"].endswith("envoy.config.listener.v3.Listener") for r in listeners["resources"]
    )


async def test_debug_snapshot_shows_secrets_without_private_keys(
    client: TestClient[Any, Any], control_plane: ControlPlane
) -> None:
    control_plane.cache.connected(ORDERS, ProxyNode(NodeId.sidecar("orders", "0")).metadata())
    certificates = control_plane.host.certificates
    assert certificates is not None
    issued = certificates.certificate(ORDERS)
    assert issued is not None
    response = await client.get(f"/debug/snapshot?node={ORDERS}")
    text = await response.text()
    secrets = {r["name"]: r for r in (await response.json())["resources"][SECRET]["resources"]}
    assert sorted(secrets) == ["mesh-roots", "workload"]
    tls = secrets["workload"]["tlsCertificate"]
    assert tls["privateKey"] == REDACTED
    assert "certificateChain" in tls  # the public part stays visible
    # Not in any form: PEM text, or the base64 of its bytes as proto3 JSON would print them.
    key = issued.key_pem()
    assert b"PRIVATE KEY" in key
    assert "PRIVATE KEY" not in text and base64.b64encode(key).decode() not in text


async def test_debug_snapshot_errors(client: TestClient[Any, Any]) -> None:
    assert (await get_json(client, "/debug/snapshot", 400))["error"]
    missing = await get_json(client, "/debug/snapshot?node=sidecar~nobody~0", 404)
    assert missing["error"] == "no snapshot for node sidecar~nobody~0"


async def test_metrics(client: TestClient[Any, Any], control_plane: ControlPlane) -> None:
    cache = control_plane.cache
    cache.connected(ORDERS, {})
    cache.record_ack(ORDERS, CLUSTER, "v", {CLUSTER})
    cache.record_nack(ORDERS, LISTENER, "v", "no")
    control_plane.metrics.pushed(ORDERS, CLUSTER)
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    for line in (
        'grpcmesh_xds_pushes_total{type="cluster"} 1.0',
        'grpcmesh_xds_acks_total{type="cluster"} 1.0',
        'grpcmesh_xds_nacks_total{type="listener"} 1.0',
        "grpcmesh_xds_connected_proxies 1.0",
        "grpcmesh_snapshot_rebuilds_total 1.0",
        "grpcmesh_snapshot_rebuild_errors_total 0.0",
        "grpcmesh_snapshot_rebuild_duration_seconds_count 1.0",
        "grpcmesh_source_problems 0.0",
    ):
        assert line in text.splitlines(), line


async def test_debug_nodes_is_the_nodes_part_of_status(
    client: TestClient[Any, Any], control_plane: ControlPlane
) -> None:
    control_plane.cache.connected(ORDERS, {})
    nodes = (await get_json(client, "/debug/nodes"))["nodes"]
    assert nodes == (await get_json(client, "/status"))["nodes"]
    assert [n["id"] for n in nodes] == [ORDERS]


def test_both_modes_run_the_one_xds_host(state_dir: Path, catalog: MethodCatalog) -> None:
    from grpcmesh_control.cluster.controller import Operator, RuntimeSettings
    from grpcmesh_control.host.xds_host import XdsHost

    local = ControlPlane(ControlPlaneSettings(state_dir), catalog=catalog)
    cluster = Operator(RuntimeSettings(), catalog)
    assert type(local.host) is XdsHost and type(cluster.host) is XdsHost
    assert local.publisher is local.host.publisher and cluster.cache is cluster.host.cache


# --- the credential ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/apply"),
        ("GET", f"/debug/snapshot?node={ORDERS}"),
        ("GET", "/debug/nodes"),
        ("GET", "/no-such-endpoint"),  # deny by default
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer not-the-token", "Basic eDp5"])
async def test_mutating_and_debug_endpoints_refuse_requests_without_the_credential(
    stranger: TestClient[Any, Any],
    state_dir: Path,
    example_files: dict[str, bytes],
    method: str,
    path: str,
    authorization: str | None,
) -> None:
    before = sorted((state_dir / "resources").iterdir())
    headers = {"X-Filename": "payments.yaml"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = await stranger.request(
        method, path, data=example_files["payments.yaml"], headers=headers
    )
    assert response.status == 401
    assert "credential" in (await response.json())["error"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert sorted((state_dir / "resources").iterdir()) == before


@pytest.mark.parametrize("path", ["/healthz", "/status", "/metrics"])
async def test_read_only_endpoints_stay_open(stranger: TestClient[Any, Any], path: str) -> None:
    assert (await stranger.get(path)).status == 200


def test_the_credential_file_is_private_and_reused(state_dir: Path) -> None:
    token = credential.create(state_dir)
    path = state_dir / credential.CREDENTIAL_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(token) >= 40  # 32 random bytes, URL-safe base64
    assert credential.ensure(state_dir) == credential.read(state_dir) == token
    assert credential.create(state_dir) != token  # each mesh gets a new one


def test_a_credential_others_can_read_is_refused(state_dir: Path) -> None:
    credential.create(state_dir)
    path = state_dir / credential.CREDENTIAL_FILE
    path.chmod(0o644)
    with pytest.raises(credential.CredentialError, match="mode 0644, must be 0600"):
        credential.read(state_dir)
    with pytest.raises(credential.CredentialError, match="no credential"):
        credential.read(state_dir / "elsewhere")


# --- bounded inputs: every refusal is a 4xx with a message ----------------------------------

BOMB = (
    b"apiVersion: grpcmesh.io/v1alpha1\nkind: MeshService\nmetadata:\n  name: bomb\n"
    b"spec:\n  grpc: {port: 9000, services: [test.v1.Bomb]}\n  config:\n"
    b'    l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    + b"".join(
        f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n".encode() for i in range(1, 9)
    )
)


@pytest.mark.timeout(30)
async def test_apply_of_an_alias_bomb_is_400_and_quick(
    client: TestClient[Any, Any], state_dir: Path
) -> None:
    assert len(BOMB) < 1600
    response = await client.post("/apply", data=BOMB, headers={"X-Filename": "bomb.yaml"})
    assert response.status == 400
    assert "values once YAML aliases are expanded" in (await response.json())["error"]
    assert not (state_dir / "resources" / "bomb.yaml").exists()
    assert (await client.get("/healthz")).status == 200


async def test_apply_with_an_over_long_file_name_is_400(
    client: TestClient[Any, Any], example_files: dict[str, bytes]
) -> None:
    name = "p" * 300 + ".yaml"  # past the file system's 255 bytes: was a 500
    response = await client.post(
        "/apply", data=example_files["payments.yaml"], headers={"X-Filename": name}
    )
    assert response.status == 400, await response.text()
    assert "at most 200" in (await response.json())["error"]


async def test_apply_of_an_oversized_body_is_413_with_a_message(
    client: TestClient[Any, Any],
) -> None:
    body = b"# " + b"x" * (2 * 1024 * 1024) + b"\n"
    response = await client.post("/apply", data=body, headers={"X-Filename": "big.yaml"})
    assert response.status == 413
    assert "body size" in await response.text()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("GET", "/apply", 405), ("GET", "/debug/snapshot", 400)],
)
async def test_admin_errors_are_4xx_with_a_message(
    client: TestClient[Any, Any], method: str, path: str, status: int
) -> None:
    response = await client.request(method, path)
    assert response.status == status
    assert (await response.text()).strip()
