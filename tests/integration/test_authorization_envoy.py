"""``spec.authorization`` enforced by a real Envoy on verified peer identities.

The sidecar's inbound listener and cluster are the ones translation generates for the
reference payments service with rules; the test lays a TLS context requiring client
certificates from a mesh CA over the listener (what mTLS STRICT does), runs a real gRPC
server behind it, and calls with workload certificates of several identities: allowed calls
reach the app, others end PERMISSION_DENIED without reaching it, health checks pass for
anyone, and Envoy's shadow policies count each denial by caller and method.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from grpcmesh_control.mesh.ca import CertificateAuthority, Issued
from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.model import parse_mesh_service
from grpcmesh_control.mesh.model.identity import ingress_identity, workload_identity
from grpcmesh_control.mesh.translate.authorization import authorization_filter, denial_policy_name
from grpcmesh_control.mesh.translate.clusters import inbound_cluster
from grpcmesh_control.mesh.translate.listeners import inbound_listener
from grpcmesh_control.mesh.translate.naming import NodeId, ProxyNode
from grpcmesh_control.observability.signals import EnvoyMetric
from tests.integration.test_control_plane_envoy import envoy_binary
from tests.loopback import LOCALHOST, free_port, poll
from tests.unit.examples import example_doc

pytestmark = pytest.mark.slow

PAYMENTS = "grpcmesh.shop.v1.PaymentService"
HEALTH = "/grpc.health.v1.Health/Check"
RULES = {
    "rules": [
        {
            "from": {"services": ["orders"]},
            "to": [{"service": PAYMENTS, "methods": ["Charge", "Refund"]}],
        },
        {"from": {"ingress": True}, "to": [{"service": PAYMENTS, "methods": ["GetPayment"]}]},
    ]
}
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


class App:
    """A gRPC server answering every method with empty bytes, recording what reached it."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    def handler(self) -> grpc.GenericRpcHandler:
        app = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
                method = details.method

                async def answer(_: bytes, __: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                    app.reached.append(method)
                    return b""

                return grpc.unary_unary_rpc_method_handler(answer)

        return Handler()


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def envoy_config(
    tmp_path: Path, ca: CertificateAuthority, server: Issued, app_port: int, listen: int, admin: int
) -> dict[str, Any]:
    svc = parse_mesh_service(
        {
            **example_doc("payments"),
            "spec": {**example_doc("payments")["spec"], "authorization": RULES},
        }
    )
    node = ProxyNode(
        NodeId.parse("sidecar~payments~0"), inbound_port=listen, bind_address=LOCALHOST
    )
    authz = authorization_filter(svc, load_catalog())
    assert authz is not None
    listener = json_format.MessageToDict(inbound_listener(node, app_port, authorization=authz))
    cluster = json_format.MessageToDict(inbound_cluster(app_port))
    root_pem = ca.pem()[0]
    tls = {
        "@type": TLS,
        "require_client_certificate": True,
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificates": [
                {
                    "certificate_chain": {
                        "filename": str(_write(tmp_path, "server.pem", server.cert_chain_pem()))
                    },
                    "private_key": {
                        "filename": str(_write(tmp_path, "server.key", server.key_pem()))
                    },
                }
            ],
            "validation_context": {
                "trusted_ca": {"filename": str(_write(tmp_path, "root.pem", root_pem))}
            },
        },
    }
    listener["filterChains"][0]["transportSocket"] = {
        "name": "envoy.transport_sockets.tls",
        "typedConfig": tls,
    }
    return {
        "admin": {"address": {"socketAddress": {"address": LOCALHOST, "portValue": admin}}},
        "staticResources": {"listeners": [listener], "clusters": [cluster]},
    }


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[tuple[str, int, App, CertificateAuthority]]:
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create_root(now)
    app = App()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((app.handler(),))
    app_port = server.add_insecure_port(f"{LOCALHOST}:0")
    await server.start()
    try:
        listen, admin = free_port(), free_port()
        serving = ca.issue_serving(["payments.mesh.test"], now, validity=dt.timedelta(hours=1))
        config = tmp_path / "envoy.json"
        config.write_text(json.dumps(envoy_config(tmp_path, ca, serving, app_port, listen, admin)))
        log = tmp_path / "envoy.log"
        with log.open("wb") as out:
            envoy = subprocess.Popen(
                [str(envoy_binary()), "-c", str(config), "--base-id", str(admin), "-l", "warning"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:

            async def ready() -> bool:
                if envoy.poll() is not None:
                    raise AssertionError(f"Envoy exited: {log.read_text()[-3000:]}")
                return await asyncio.to_thread(_ready, admin)

            await poll(ready, "Envoy to be ready", timeout=30)
            yield f"{LOCALHOST}:{listen}", admin, app, ca
        finally:
            envoy.terminate()
            await asyncio.to_thread(envoy.wait, 10)
    finally:
        await server.stop(None)


def _ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{LOCALHOST}:{admin}/ready", timeout=2) as r:
            return int(r.status) == 200
    except OSError:
        return False


def _admin_get(admin: int, path: str) -> str:
    with urllib.request.urlopen(f"http://{LOCALHOST}:{admin}{path}", timeout=5) as r:
        return str(r.read().decode())


def _stats(admin: int) -> dict[str, int]:
    lines = _admin_get(admin, "/stats?filter=rbac").splitlines()
    return {k: int(v) for k, _, v in (line.partition(": ") for line in lines) if v.isdigit()}


async def call(
    address: str, ca: CertificateAuthority, client: Issued | None, path: str
) -> grpc.StatusCode:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.pem()[0],
        private_key=None if client is None else client.key_pem(),
        certificate_chain=None if client is None else client.cert_chain_pem(),
    )
    options = (("grpc.ssl_target_name_override", "payments.mesh.test"),)
    async with grpc.aio.secure_channel(address, credentials, options) as channel:
        method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
        try:
            await method(b"", timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def test_only_what_the_rules_allow_reaches_the_app(
    sidecar: tuple[str, int, App, CertificateAuthority],
) -> None:
    address, admin, app, ca = sidecar
    now = dt.datetime.now(dt.UTC)
    orders = ca.issue_workload(workload_identity("orders"), now)
    inventory = ca.issue_workload(workload_identity("inventory"), now)
    ingress = ca.issue_workload(ingress_identity(), now)
    foreign = CertificateAuthority.create_root(now).issue_workload(workload_identity("orders"), now)

    charge, get = f"/{PAYMENTS}/Charge", f"/{PAYMENTS}/GetPayment"
    outcomes = {
        ("orders", "Charge"): await call(address, ca, orders, charge),
        ("orders", "GetPayment"): await call(address, ca, orders, get),
        ("inventory", "Charge"): await call(address, ca, inventory, charge),
        ("ingress", "GetPayment"): await call(address, ca, ingress, get),
        ("ingress", "Charge"): await call(address, ca, ingress, charge),
        ("inventory", "health"): await call(address, ca, inventory, HEALTH),
    }
    assert outcomes == {
        ("orders", "Charge"): grpc.StatusCode.OK,
        ("orders", "GetPayment"): grpc.StatusCode.PERMISSION_DENIED,
        ("inventory", "Charge"): grpc.StatusCode.PERMISSION_DENIED,
        ("ingress", "GetPayment"): grpc.StatusCode.OK,
        ("ingress", "Charge"): grpc.StatusCode.PERMISSION_DENIED,
        ("inventory", "health"): grpc.StatusCode.OK,
    }
    assert app.reached == [charge, get, HEALTH]
    # A certificate from another CA, or none, never gets as far as the rules.
    assert await call(address, ca, foreign, charge) == grpc.StatusCode.UNAVAILABLE
    assert await call(address, ca, None, charge) == grpc.StatusCode.UNAVAILABLE
    assert app.reached == [charge, get, HEALTH]

    stats = await asyncio.to_thread(_stats, admin)
    prefix = "http.inbound.rbac.authz_denied.policy."
    denied = {
        name.removeprefix(prefix).removesuffix(".shadow_denied"): count
        for name, count in stats.items()
        if name.startswith(prefix) and name.endswith(".shadow_denied") and count
    }
    assert denied == {
        denial_policy_name("orders", "PaymentService/GetPayment"): 1,
        denial_policy_name("other", "PaymentService/Charge"): 1,
        denial_policy_name("ingress", "PaymentService/Charge"): 1,
    }
    assert stats["http.inbound.rbac.authz.denied"] == 3
    assert stats["http.inbound.rbac.authz.allowed"] == 3
    # What Prometheus scrapes: the policy name as a label of the metric the alert reads.
    exported = await asyncio.to_thread(_admin_get, admin, "/stats/prometheus")
    label = denial_policy_name("orders", "PaymentService/GetPayment")
    assert f'{EnvoyMetric.RBAC_POLICY_SHADOW_DENIED}{{envoy_rbac_policy_name="{label}"' in exported
