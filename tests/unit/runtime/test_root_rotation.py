"""Root rotation in the local control plane (no sockets but the in-process HTTP test server):
each step only once every connected node ACKed the one before, the state directory always
ahead of what the nodes were sent, a restart or a crash mid-way resumed from the disk, and the
endpoint behind the mesh's credential."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from cryptography import x509

from grpcmesh_control.local import credential
from grpcmesh_control.local.clients import AdminUnavailable, ControlPlaneClient
from grpcmesh_control.local.controlplane import ControlPlane, ControlPlaneSettings
from grpcmesh_control.local.mesh_ca import (
    BUNDLE_FILE,
    CA_DIR,
    RotationPhase,
    load_mesh_authority,
    load_or_create_mesh_ca,
)
from grpcmesh_control.local.rotation import (
    RootRotation,
    RotationRefused,
    RotationTimeout,
    rotate_root,
)
from grpcmesh_control.mesh.certificates import WorkloadCertificates
from grpcmesh_control.mesh.model import MethodCatalog
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_control.mesh.xds import SECRET, SnapshotCache
from tests.unit.runtime.test_certificates import served

NODES = ("sidecar~orders~0", "sidecar~payments~0")


@pytest.fixture
def control_plane(tmp_path: Path, catalog: MethodCatalog) -> ControlPlane:
    (tmp_path / "resources").mkdir()
    return ControlPlane(ControlPlaneSettings(tmp_path), catalog=catalog)


def connect(cache: SnapshotCache, node: str) -> None:
    name, index = node.split("~")[1:]
    cache.connected(node, ProxyNode(NodeId.sidecar(name, index)).metadata())


def ack(cache: SnapshotCache, node: str) -> None:
    secrets = cache.node_secrets(node)
    assert secrets is not None
    cache.record_ack(node, SECRET, secrets.version, {SECRET})


def held(cache: SnapshotCache, node: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The node's workload certificate and the roots it is sent."""
    out = served(cache, node)
    chain = out["workload"].tls_certificate.certificate_chain.inline_bytes
    roots = out["mesh-roots"].validation_context.trusted_ca.inline_bytes
    return x509.load_pem_x509_certificate(chain), x509.load_pem_x509_certificates(roots)


def bundle_file(state: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((state / BUNDLE_FILE).read_bytes())


def test_each_step_waits_for_every_node_and_the_old_root_is_gone_at_the_end(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cache, rotation = control_plane.cache, control_plane.rotation
    assert rotation is not None
    old = load_or_create_mesh_ca(tmp_path, dt.datetime.now(dt.UTC))
    for node in NODES:
        connect(cache, node)
        ack(cache, node)
    # A proxyless app's gRPC asks for no secrets and never ACKs any: it is not waited for.
    cache.connected("proxyless~catalog~v1-0", {})
    assert rotation.status()["pending"] == []

    # trust: both roots everywhere, the old CA still signs
    status = rotation.advance(RotationPhase.TRUST)
    assert status["phase"] == "trust" and status["pending"] == list(NODES)
    new = load_mesh_authority(tmp_path, dt.datetime.now(dt.UTC)).new
    assert new is not None and new.root != old.root
    for node in NODES:
        cert, roots = held(cache, node)
        assert roots == [old.root, new.root]
        assert cert.issuer == old.root.subject
    assert bundle_file(tmp_path) == [old.root, new.root]

    # sign is refused while a node has not ACKed the bundle, naming it
    ack(cache, NODES[0])
    with pytest.raises(RotationRefused) as refused:
        rotation.advance(RotationPhase.SIGN)
    assert refused.value.pending == [NODES[1]]
    assert held(cache, NODES[0])[0].issuer == old.root.subject  # nothing signed by the new one
    ack(cache, NODES[1])
    rotation.advance(RotationPhase.SIGN)
    for node in NODES:
        cert, roots = held(cache, node)
        cert.verify_directly_issued_by(new.root)
        assert roots == [new.root, old.root]

    # finish waits for the new certificates' ACKs too
    with pytest.raises(RotationRefused):
        rotation.advance(RotationPhase.FINISH)
    for node in NODES:
        ack(cache, node)
    status = rotation.advance(RotationPhase.FINISH)
    assert status["phase"] is None
    assert [r["serial"] for r in status["roots"]] == [f"{new.root.serial_number:x}"]
    for node in NODES:
        cert, roots = held(cache, node)
        assert roots == [new.root]
        cert.verify_directly_issued_by(new.root)
    assert load_or_create_mesh_ca(tmp_path, dt.datetime.now(dt.UTC)).root == new.root
    assert bundle_file(tmp_path) == [new.root]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ca")) == [
        CA_DIR,
        BUNDLE_FILE,
    ]


def test_steps_out_of_order_are_refused_and_a_step_taken_again_changes_nothing(
    control_plane: ControlPlane,
) -> None:
    rotation = control_plane.rotation
    assert rotation is not None
    with pytest.raises(RotationRefused, match="start with phase trust"):
        rotation.advance(RotationPhase.SIGN)
    assert rotation.advance(RotationPhase.FINISH)["phase"] is None  # nothing to finish
    first = rotation.advance(RotationPhase.TRUST)
    assert rotation.advance(RotationPhase.TRUST) == first  # no new root staged twice
    rotation.advance(RotationPhase.SIGN)  # no node connected: nothing to wait for
    with pytest.raises(RotationRefused, match="trust comes first"):
        rotation.advance(RotationPhase.TRUST)


def test_a_restarted_control_plane_resumes_the_rotation_from_the_disk(
    control_plane: ControlPlane, tmp_path: Path, catalog: MethodCatalog
) -> None:
    assert control_plane.rotation is not None
    control_plane.rotation.advance(RotationPhase.TRUST)
    control_plane.rotation.advance(RotationPhase.SIGN)
    authority = load_mesh_authority(tmp_path, dt.datetime.now(dt.UTC))
    assert authority.new is not None and authority.old is not None

    again = ControlPlane(ControlPlaneSettings(tmp_path), catalog=catalog)
    assert again.rotation is not None and again.rotation.status()["phase"] == "sign"
    connect(again.cache, NODES[0])
    cert, roots = held(again.cache, NODES[0])
    cert.verify_directly_issued_by(authority.new.root)
    assert roots == [authority.new.root, authority.old.root]


def test_a_crash_inside_finish_is_completed_before_anything_reads_the_ca(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    load_or_create_mesh_ca(tmp_path, now)
    certificates = WorkloadCertificates(SnapshotCache(), load_or_create_mesh_ca(tmp_path, now))
    rotation = RootRotation(tmp_path, certificates)
    rotation.advance(RotationPhase.TRUST)
    rotation.advance(RotationPhase.SIGN)
    new = load_mesh_authority(tmp_path, now).new
    assert new is not None
    # The crash: the phase says finish, ca/ already moved aside, ca-next/ not yet moved in.
    (tmp_path / "ca-rotation").write_text("finish\n")
    (tmp_path / "ca").rename(tmp_path / "ca-retired")
    # The launcher's call must not create a fresh root in the gap: it completes the finish.
    assert load_or_create_mesh_ca(tmp_path, now).root == new.root
    assert not (tmp_path / "ca-retired").exists() and not (tmp_path / "ca-next").exists()
    assert load_mesh_authority(tmp_path, now).phase is None


@pytest.fixture
async def server(control_plane: ControlPlane) -> AsyncIterator[BaseTestServer]:
    async with TestServer(control_plane.http_app(), host="127.0.0.1") as test_server:
        yield test_server


async def test_the_endpoint_needs_the_credential(
    control_plane: ControlPlane, server: BaseTestServer
) -> None:
    assert control_plane.rotation is not None
    stranger: TestClient[Any, Any]
    async with TestClient(server) as stranger:
        for method in ("GET", "POST"):
            response = await stranger.request(method, "/ca/rotation", json={"phase": "trust"})
            assert response.status == 401, method
    assert control_plane.rotation.status()["phase"] is None


async def test_the_client_drives_every_step_and_reports_progress(
    control_plane: ControlPlane, server: BaseTestServer, tmp_path: Path
) -> None:
    cache = control_plane.cache
    for node in NODES:
        connect(cache, node)
        ack(cache, node)
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        if "waiting for" in line:  # the nodes ACK as a client would see them do
            for node in NODES:
                ack(cache, node)

    address = f"{server.host}:{server.port}"
    async with ControlPlaneClient(address, token=credential.read(tmp_path)) as client:
        doc = await rotate_root(client, poll_s=0.01, timeout_s=10, report=report)
        assert doc["phase"] is None and doc["pending"] == []
        assert any(line.startswith("trust: 0/2 node(s) ACKed; waiting for") for line in lines)
        assert lines[-1].startswith("finish: all 2 node(s) trust the new root alone")

        # a node that never ACKs: the client gives up, naming it, and the phase stays
        connect(cache, "sidecar~catalog~0")
        with pytest.raises(RotationTimeout, match="sidecar~catalog~0"):
            await rotate_root(client, poll_s=0.01, timeout_s=0.3)
        assert (await client.rotation())["phase"] == "trust"


async def test_without_a_ca_the_endpoint_says_there_is_nothing_to_rotate(
    tmp_path: Path, catalog: MethodCatalog
) -> None:
    plaintext = ControlPlane(ControlPlaneSettings(tmp_path, certificates=None), catalog=catalog)
    assert plaintext.rotation is None
    async with TestServer(plaintext.http_app(), host="127.0.0.1") as server:
        address = f"{server.host}:{server.port}"
        async with ControlPlaneClient(address, token=credential.read(tmp_path)) as client:
            with pytest.raises(AdminUnavailable, match="without a CA"):
                await client.rotate("trust")
