"""Local mode's gateway certificate files (no sockets): the control plane reads them at start
(a bad one stops it, naming the file), serves them to the ingress node over SDS beside its
workload certificate, and re-reads them when they change: a good new certificate is served,
a bad one is a problem in /status while the previous certificate stays."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from grpcmesh_control.host.xds_host import REDACTED, snapshot_document
from grpcmesh_control.local.controlplane import ControlPlane, ControlPlaneSettings
from grpcmesh_control.local.gateway_tls import GatewayTlsFiles
from grpcmesh_control.mesh.ca import CertificateAuthority
from grpcmesh_control.mesh.gateway_tls import GatewayTlsError
from grpcmesh_control.mesh.model import MethodCatalog
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_control.mesh.translate.tls import GATEWAY_CERTIFICATE_SECRET, WORKLOAD_SECRET

NOW = dt.datetime.now(dt.UTC)
GATEWAY = ProxyNode(NodeId.ingress())


def _write(files: GatewayTlsFiles) -> bytes:
    issued = CertificateAuthority.create_root(NOW).issue_serving(
        ["127.0.0.1"], NOW, validity=dt.timedelta(days=1)
    )
    files.key.write_bytes(issued.key_pem())
    files.cert.write_bytes(issued.cert_chain_pem())
    return issued.cert_chain_pem()


def _served_chain(cp: ControlPlane) -> bytes:
    served = cp.cache.node_secrets(str(GATEWAY.id))
    assert served is not None
    assert WORKLOAD_SECRET in served.resources  # its mTLS into the mesh, beside it
    secret = secret_pb2.Secret()
    assert served.resources[GATEWAY_CERTIFICATE_SECRET].Unpack(secret)
    return bytes(secret.tls_certificate.certificate_chain.inline_bytes)


@pytest.fixture
def files(tmp_path: Path) -> GatewayTlsFiles:
    return GatewayTlsFiles(tmp_path / "gw.crt", tmp_path / "gw.key")


def _control_plane(state: Path, files: GatewayTlsFiles, catalog: MethodCatalog) -> ControlPlane:
    cp = ControlPlane(ControlPlaneSettings(state, gateway_tls=files), catalog=catalog)
    cp.sources.reload()
    cp.publisher.rebuild()
    cp.cache.connected(str(GATEWAY.id), GATEWAY.metadata())
    return cp


def test_the_files_are_served_and_a_changed_one_replaces_them(
    tmp_path: Path, files: GatewayTlsFiles, catalog: MethodCatalog
) -> None:
    first = _write(files)
    cp = _control_plane(tmp_path / "state", files, catalog)
    assert _served_chain(cp) == first
    assert cp.reload_gateway_tls() is False  # unchanged files: nothing to do
    # /debug/snapshot shows the secret with its key redacted.
    snapshot = cp.cache.node_snapshot(str(GATEWAY.id))
    assert snapshot is not None
    shown = json.dumps(snapshot_document(str(GATEWAY.id), snapshot))
    key_body = files.key.read_text().splitlines()[1]
    assert GATEWAY_CERTIFICATE_SECRET in shown and REDACTED in shown
    assert key_body not in shown and base64.b64encode(files.key.read_bytes()).decode() not in shown
    second = _write(files)
    assert cp.reload_gateway_tls() is True
    assert _served_chain(cp) == second
    assert cp.host.status()["problems"] == []


def test_a_broken_file_is_a_problem_and_the_last_good_certificate_stays(
    tmp_path: Path, files: GatewayTlsFiles, catalog: MethodCatalog
) -> None:
    good = _write(files)
    cp = _control_plane(tmp_path / "state", files, catalog)
    files.key.write_bytes(b"not a key")
    assert cp.reload_gateway_tls() is False
    assert _served_chain(cp) == good
    [problem] = cp.host.status()["problems"]
    assert problem.startswith(f"ingress TLS: {files.key}: not an unencrypted PEM private key")
    fixed = _write(files)
    assert cp.reload_gateway_tls() is True
    assert _served_chain(cp) == fixed and cp.host.status()["problems"] == []


def test_a_bad_file_at_start_stops_the_control_plane_naming_it(
    tmp_path: Path, files: GatewayTlsFiles, catalog: MethodCatalog
) -> None:
    with pytest.raises(GatewayTlsError, match=f"{files.cert}: No such file"):
        ControlPlane(ControlPlaneSettings(tmp_path, gateway_tls=files), catalog=catalog)
