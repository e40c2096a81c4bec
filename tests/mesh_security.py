"""What the mTLS and authorization tests share, in local mode (tests/e2e) and in the cluster
(tests/cluster): the authorization rules that allow exactly the reference saga's calls (the
chart's reference services carry them), probes that present a chosen client certificate to a
sidecar's inbound listener, and a sidecar's denial counters."""

from __future__ import annotations

import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

from grpcmesh_control.mesh.ca import Issued
from grpcmesh_control.observability.signals import EnvoyMetric

SHOP = "grpcmesh.shop.v1"


def _allow(callers: dict[str, Any], service: str, *methods: str) -> dict[str, Any]:
    return {"from": callers, "to": [{"service": f"{SHOP}.{service}", "methods": list(methods)}]}


_ORDERS = {"services": ["orders"]}
REFERENCE_RULES: dict[str, list[dict[str, Any]]] = {
    "catalog": [{"from": {"ingress": True}}, _allow(_ORDERS, "CatalogService", "GetProduct")],
    "orders": [{"from": {"ingress": True}}],
    "inventory": [
        _allow(_ORDERS, "InventoryService", "ReserveStock", "ReleaseStock", "CommitStock")
    ],
    "payments": [_allow(_ORDERS, "PaymentService", "Charge", "Refund")],
}
"""MeshService -> its ``spec.authorization.rules``: exactly the calls the saga makes. The
ingress calls orders and catalog (both exposed); orders calls one catalog method, three
inventory methods and two payments methods."""


def _client_context(roots_pem: bytes, client: Issued | None, scratch: str) -> ssl.SSLContext:
    """TLS to a sidecar: trust ``roots_pem``, no host name check (its certificate names a
    SPIFFE ID, no host name), present ``client`` if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=roots_pem.decode())
    if client is not None:
        chain, key = Path(scratch, "chain.pem"), Path(scratch, "key.pem")
        chain.write_bytes(client.cert_chain_pem())
        key.write_bytes(client.key_pem())
        context.load_cert_chain(chain, key)
    return context


def tls_probe(address: str, roots_pem: bytes, client: Issued | None) -> str:
    """Open TLS to ``address`` (``host:port``) presenting ``client`` if given and send one
    HTTP/1.1 request: ``"accepted: <status line>"`` or ``"refused: <why>"``."""
    host, _, port = address.rpartition(":")
    with tempfile.TemporaryDirectory() as scratch:
        context = _client_context(roots_pem, client, scratch)
        try:
            with (
                socket.create_connection((host, int(port)), timeout=5) as raw,
                context.wrap_socket(raw) as tls,
            ):
                tls.sendall(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                first = tls.recv(64)
        except (ssl.SSLError, ConnectionError) as exc:
            return f"refused: {exc}"
    if not first:
        return "refused: closed without an answer"
    return f"accepted: {first.splitlines()[0].decode(errors='replace')}"


def grpc_status(address: str, path: str, client: Issued, roots_pem: bytes) -> str:
    """A gRPC-shaped HTTP/1.1 POST of ``path`` over mTLS (presenting ``client``) to a sidecar's
    inbound listener at ``address``: the ``grpc-status`` of its answer, or the status line when
    there is none."""
    host, _, port = address.rpartition(":")
    request = (
        f"POST {path} HTTP/1.1\r\nHost: probe\r\ncontent-type: application/grpc\r\n"
        "te: trailers\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"
    ).encode() + b"\x00\x00\x00\x00\x00"
    with tempfile.TemporaryDirectory() as scratch:
        context = _client_context(roots_pem, client, scratch)
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                answer += chunk
    head = answer.partition(b"\r\n\r\n")[0].decode(errors="replace").splitlines()
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "grpc-status":
            return value.strip()
    return head[0] if head else "no answer"


def rbac_denials(prometheus_text: str) -> dict[str, int]:
    """A sidecar's denial counters by policy name (``caller=<who> method=<Service/Method>``),
    from its ``/stats/prometheus``: what Prometheus scrapes and the alert reads."""
    prefix = f'{EnvoyMetric.RBAC_POLICY_SHADOW_DENIED}{{envoy_rbac_policy_name="'
    counts: dict[str, int] = {}
    for line in prometheus_text.splitlines():
        if line.startswith(prefix):
            name = line[len(prefix) :].partition('"')[0]
            counts[name] = int(float(line.rpartition(" ")[2]))
    return counts
