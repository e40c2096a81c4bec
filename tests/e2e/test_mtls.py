"""Mutual TLS between sidecars, end to end (local mode, real Envoys): STRICT by default, the
refusals (plaintext, no certificate, a foreign CA, a foreign trust domain) and the Envoy stat
each one moves, PERMISSIVE only where declared, workload certificates rotating every few
seconds under open-loop load without a failed call, and the xDS channel refusing a node that
asks for another node's configuration (or sends no token).

The mesh runs with short-lived certificates (``GRPCMESH_WORKLOAD_CERT_TTL``), so every test
here also runs across rotations. The last test rotates the mesh root itself (``grpcmesh ca
rotate``) under load, with a deliberately slow xDS client among the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from prometheus_client.parser import text_string_to_metric_families

from grpcmesh_control.host.metrics import CERTIFICATE_EXPIRY, ROOTS_EXPIRY
from grpcmesh_control.local import credential
from grpcmesh_control.local.mesh_ca import BUNDLE_FILE, load_or_create_mesh_ca, read_ca
from grpcmesh_control.local.plan import ADMIN_SOCKET
from grpcmesh_control.local.state import ReplicaState
from grpcmesh_control.mesh.ca import CaError, CertificateAuthority, Issued, trust_bundle
from grpcmesh_control.mesh.model.identity import SpiffeId, ingress_identity, workload_identity
from grpcmesh_control.mesh.xds import SECRET
from grpcmesh_loadgen import run_load
from tests.e2e.harness import Mesh, envoy_stats, eventually, grpcmesh, proxies
from tests.e2e.test_mesh import (
    PAYMENTS_YAML,
    _charge_request,
    _payments_variant,
    apply_and_converge,
    charges,
    payments_stub,
    wait_converged,
)
from tests.mesh_security import tls_probe

pytestmark = pytest.mark.slow

CERT_TTL_S = 6
"""Workload certificates live 6 s and are renewed every 3 s (half life)."""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(
        tmp_path_factory.mktemp("mtls") / "run",
        env={"GRPCMESH_WORKLOAD_CERT_TTL": f"{CERT_TTL_S}s"},
    )
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()


def _mesh_ca(mesh: Mesh) -> CertificateAuthority:
    """The mesh's CA, as the control plane keeps it in the run directory."""
    return load_or_create_mesh_ca(mesh.run_dir, dt.datetime.now(dt.UTC))


def _roots(mesh: Mesh) -> bytes:
    return trust_bundle([_mesh_ca(mesh).root], dt.datetime.now(dt.UTC))


async def _ssl_stats(admin: str) -> dict[str, int]:
    """The inbound listener's TLS counters (``listener.<address>.ssl.*``), by their suffix."""
    stats = await envoy_stats(admin, ".ssl.")
    return {
        name.rpartition(".ssl.")[2]: value
        for name, value in stats.items()
        if name.startswith("listener.") and "0.0.0.0" not in name
    }


async def _refused_with(
    mesh: Mesh, key: str, client: Issued | None, stat: str
) -> tuple[str, dict[str, int]]:
    """Probe ``key``'s inbound listener and wait for ``stat`` to count the refusal."""
    replica = mesh.replica(key)
    before = await _ssl_stats(replica.sidecar_admin)
    outcome = await asyncio.to_thread(tls_probe, replica.sidecar_inbound, _roots(mesh), client)

    async def counted() -> dict[str, int] | None:
        after = await _ssl_stats(replica.sidecar_admin)
        return after if after.get(stat, 0) > before.get(stat, 0) else None

    after = await eventually(counted, timeout=10, what=f"{key}'s Envoy counts ssl.{stat}")
    return outcome, {k: after.get(k, 0) - before.get(k, 0) for k in after}


def _issue(ca: CertificateAuthority, identity: SpiffeId) -> Issued:
    return ca.issue_workload(identity, dt.datetime.now(dt.UTC), ttl=dt.timedelta(minutes=5))


async def test_the_reference_flow_runs_over_mutual_tls(mesh: Mesh) -> None:
    report = await run_load(mesh.state.ingress, orders=20, rate=10.0, deadline_s=10.0)
    assert report.succeeded, (report.statuses, report.error_samples)
    payments = mesh.replica("payments/v1-0")
    # Every hop into payments was a TLS handshake on its inbound listener, none failed.
    stats = await _ssl_stats(payments.sidecar_admin)
    assert stats.get("handshake", 0) > 0, stats
    assert stats.get("fail_verify_error", 0) == 0, stats
    # It presents its own SPIFFE ID (and nothing else), from the mesh CA.
    certs = await _certs(payments)
    sans = {
        san["uri"]
        for entry in certs["certificates"]
        for cert in entry["cert_chain"]
        for san in cert.get("subject_alt_names", ())
    }
    assert sans == {workload_identity("payments").uri}


async def test_a_plaintext_caller_is_refused(mesh: Mesh) -> None:
    replica = mesh.replica("payments/v1-0")
    before = await _ssl_stats(replica.sidecar_admin)
    async with payments_stub(replica.sidecar_inbound) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Charge(_charge_request("plaintext", 0), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE

    async def counted() -> int | None:
        after = await _ssl_stats(replica.sidecar_admin)
        grown = after.get("connection_error", 0) - before.get("connection_error", 0)
        return grown if grown > 0 else None

    await eventually(counted, timeout=10, what="ssl.connection_error counts the plaintext call")


async def test_a_caller_without_a_certificate_is_refused(mesh: Mesh) -> None:
    outcome, delta = await _refused_with(mesh, "payments/v1-0", None, "fail_verify_no_cert")
    assert outcome.startswith("refused"), outcome
    assert delta.get("handshake", 0) == 0, delta


async def test_a_caller_with_a_foreign_ca_is_refused(mesh: Mesh) -> None:
    # Same identity as a real caller (orders), signed by a CA the mesh does not trust.
    foreign = CertificateAuthority.create_root(dt.datetime.now(dt.UTC))
    impostor = _issue(foreign, workload_identity("orders"))
    outcome, delta = await _refused_with(mesh, "payments/v1-0", impostor, "fail_verify_error")
    assert outcome.startswith("refused"), outcome
    assert delta.get("handshake", 0) == 0, delta


async def test_a_caller_from_a_foreign_trust_domain_is_refused(mesh: Mesh) -> None:
    # The mesh's own CA, but an identity outside its trust domain.
    stranger = _issue(_mesh_ca(mesh), workload_identity("orders", trust_domain="other.example"))
    outcome, _ = await _refused_with(mesh, "payments/v1-0", stranger, "fail_verify_san")
    assert outcome.startswith("refused"), outcome


async def test_a_caller_with_a_mesh_certificate_is_let_in(mesh: Mesh) -> None:
    # The control for the refusals above: the same probe, with a certificate the mesh issued.
    caller = _issue(_mesh_ca(mesh), workload_identity("orders"))
    replica = mesh.replica("payments/v1-0")
    outcome = await asyncio.to_thread(tls_probe, replica.sidecar_inbound, _roots(mesh), caller)
    assert outcome.startswith("accepted: HTTP/1.1"), outcome


async def test_permissive_accepts_plaintext_only_where_declared(mesh: Mesh, workdir: Path) -> None:
    payments, orders = mesh.replica("payments/v1-0"), mesh.replica("orders/v1-0")
    await apply_and_converge(mesh, _payments_variant(workdir, {"mtls": {"mode": "PERMISSIVE"}}))
    try:
        # payments takes plaintext straight to its sidecar, and mesh callers (mTLS) still work.
        async with payments_stub(payments.sidecar_inbound) as stub:
            await stub.Charge(_charge_request("permissive", 0), timeout=10)
        assert await charges(mesh.state.ingress, 10) == {"OK": 10}
        outcome = await asyncio.to_thread(tls_probe, payments.sidecar_inbound, _roots(mesh), None)
        assert outcome.startswith("refused"), "TLS without a client certificate is no mesh peer"
        # orders did not declare it: still STRICT.
        async with payments_stub(orders.sidecar_inbound) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Charge(_charge_request("strict", 0), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await apply_and_converge(mesh, PAYMENTS_YAML)
    async with payments_stub(payments.sidecar_inbound) as stub:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Charge(_charge_request("strict-again", 0), timeout=5)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("admin", timeout=5)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def _admin_get(replica: ReplicaState, path: str) -> str:
    """GET ``path`` on the sidecar's full admin interface: its unix socket (the TCP admin port
    serves only health and stats)."""
    return _admin_get_at(Path(replica.config_file), path)


async def _certs(replica: ReplicaState) -> dict[str, Any]:
    certs: dict[str, Any] = json.loads(await asyncio.to_thread(_admin_get, replica, "/certs"))
    return certs


async def _serials(replica: ReplicaState) -> set[str]:
    """Serial numbers of the workload certificates a sidecar holds now."""
    certs = await _certs(replica)
    return {
        cert["serial_number"]
        for entry in certs["certificates"]
        for cert in entry["cert_chain"]
        if cert.get("subject_alt_names")
    }


async def test_certificates_rotate_under_load_without_a_failed_call(mesh: Mesh) -> None:
    await wait_converged(mesh)
    watched = [mesh.replica("orders/v1-0"), mesh.replica("payments/v1-0")]
    seen: dict[str, set[str]] = {r.node_id: set() for r in watched}
    rotations = 3

    async def watch() -> None:
        while True:
            for replica in watched:
                seen[replica.node_id] |= await _serials(replica)
            await asyncio.sleep(0.5)

    async with asyncio.TaskGroup() as group:
        watcher = group.create_task(watch())
        # Open loop, 8 orders/s for ~12 s: four half lives, so every sidecar renews 3+ times.
        report = await run_load(
            mesh.state.ingress, orders=8 * CERT_TTL_S * 2, rate=8.0, deadline_s=10.0
        )
        watcher.cancel()
    assert report.succeeded, (report.statuses, report.error_samples)
    assert report.ok == report.planned
    for node, serials in seen.items():
        assert len(serials) > rotations, (node, serials)

    async def secrets_acked() -> bool:
        nodes = proxies(await asyncio.to_thread(mesh.status)).values()
        return all(n["secrets"] is not None and n["secrets"]["acked"] for n in nodes)

    # `status --json` reports each node's secrets apart from its config, and every one ACKs them.
    await eventually(secrets_acked, timeout=10, what="every node ACKs its current secrets")


async def test_status_and_metrics_show_each_endpoints_identity_and_certificate_expiry(
    mesh: Mesh,
) -> None:
    await wait_converged(mesh)
    doc = await asyncio.to_thread(mesh.status)
    now = dt.datetime.now(dt.UTC)
    nodes = proxies(doc)
    for service in doc["services"]:
        for endpoint in service["endpoints"]:
            assert endpoint["identity"] == workload_identity(service["name"]).uri, endpoint
    assert doc["gateway"]["identity"] == ingress_identity().uri
    for node_id, node in nodes.items():
        not_after = dt.datetime.fromisoformat(node["certificate"]["not_after"])
        # A live certificate of the configured lifetime (renewed every half of it).
        assert now - dt.timedelta(seconds=2) < not_after, (node_id, node["certificate"])
        assert not_after <= now + dt.timedelta(seconds=CERT_TTL_S + 2), node["certificate"]
    # The control plane exports the same expiry per node and identity, and the roots'.
    text = await asyncio.to_thread(_metrics, mesh.state.control_plane_admin)
    exported = {
        sample.labels["node"]: sample.labels["identity"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == CERTIFICATE_EXPIRY
    }
    assert exported == {node_id: node["identity"] for node_id, node in nodes.items()}
    assert f"\n{ROOTS_EXPIRY} " in text


def _metrics(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


# --- the xDS channel ---------------------------------------------------------------------------


def _node_token(bootstrap: Path) -> tuple[str, str]:
    """The ``authorization`` metadata a node's bootstrap sends on its ADS stream."""
    document = json.loads(bootstrap.read_text())
    (header,) = document["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"]
    return header["key"], header["value"]


async def _ads_refusal(
    xds: str, roots: bytes, node_id: str, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, int]:
    """Ask ``xds`` for ``node_id``'s secrets (its key) with ``metadata``: the status the
    stream ends with, and how many responses came before. One request only: a second one,
    written after the server has refused the stream, sometimes ended it as INTERNAL."""
    async with grpc.aio.secure_channel(xds, grpc.ssl_channel_credentials(roots)) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            metadata=metadata
        )
        request = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=SECRET)
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.write(request)  # may fail: refused on the metadata alone
        received = 0
        async with asyncio.timeout(15):
            try:
                while await call.read() is not grpc.aio.EOF:
                    received += 1
            except grpc.aio.AioRpcError as exc:
                return exc.code(), received
        return await call.code(), received


async def test_a_sidecar_asking_for_another_nodes_config_is_refused(mesh: Mesh) -> None:
    state = mesh.state
    orders = mesh.replica("orders/v1-0")
    payments = mesh.replica("payments/v1-0")
    bootstraps = [mesh.run_dir / "ingress" / "envoy.json"] + [
        mesh.run_dir / r.service / r.replica / "envoy.json" for r in state.replicas
    ]
    for bootstrap in bootstraps:  # each holds its node's token: its owner's alone
        assert bootstrap.stat().st_mode & 0o777 == 0o600, bootstrap
    # A compromised payments sidecar's token, asking for the orders sidecar's config and key.
    payments_token = _node_token(mesh.run_dir / "payments" / payments.replica / "envoy.json")
    roots = (mesh.run_dir / "ca" / "ca.crt").read_bytes()
    code, received = await _ads_refusal(
        state.control_plane_xds, roots, orders.node_id, (payments_token,)
    )
    assert (code, received) == (grpc.StatusCode.PERMISSION_DENIED, 0)
    code, received = await _ads_refusal(state.control_plane_xds, roots, orders.node_id, ())
    assert (code, received) == (grpc.StatusCode.UNAUTHENTICATED, 0)
    text = await asyncio.to_thread(_metrics, state.control_plane_admin)
    for reason in ("unauthenticated", "wrong_node"):
        line = f'grpcmesh_xds_refusals_total{{reason="{reason}"}}'
        assert any(
            row.startswith(line + " ") and float(row.split()[-1]) >= 1 for row in text.splitlines()
        ), f"{line} not counted"
    # The mesh itself is unaffected: every node still converged with its own token.
    await wait_converged(mesh)


# --- root rotation ---------------------------------------------------------------------------

SLOW_NODE = "sidecar~catalog~slow"
SLOW_S = 3.0
LOAD_ORDERS = 160
"""How long the slow node sits on the first bundle that trusts a new root before ACKing it."""


def _bundle_serials(response: discovery_pb2.DiscoveryResponse) -> set[int]:
    """Serial numbers of the roots a SDS response's ``mesh-roots`` secret trusts."""
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        if secret.name == "mesh-roots":
            pem = secret.validation_context.trusted_ca.inline_bytes
            return {c.serial_number for c in x509.load_pem_x509_certificates(pem)}
    return set()


class _SlowNode:
    """An xDS client standing in for a sidecar slow to take a new trust bundle (a busy or
    briefly partitioned Envoy): it ACKs every SDS response at once, except the first whose
    bundle trusts a root it had not seen, which it ACKs ``SLOW_S`` later, noting when."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.new_root_acked_at: float | None = None
        self.responses = 0

    async def run(self) -> None:
        mesh = self.mesh
        catalog = next(r for r in mesh.state.replicas if r.service == "catalog")
        bootstrap = json.loads(
            (mesh.run_dir / catalog.service / catalog.replica / "envoy.json").read_text()
        )
        node = base_pb2.Node(
            id=SLOW_NODE, metadata=json_format.ParseDict(bootstrap["node"]["metadata"], Struct())
        )
        token = credential.node_metadata(credential.read(mesh.run_dir), SLOW_NODE)
        roots = (mesh.run_dir / BUNDLE_FILE).read_bytes()
        names = ["workload", "mesh-roots"]
        xds = mesh.state.control_plane_xds
        async with grpc.aio.secure_channel(xds, grpc.ssl_channel_credentials(roots)) as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
                metadata=tuple(token.items())
            )
            await call.write(
                discovery_pb2.DiscoveryRequest(node=node, type_url=SECRET, resource_names=names)
            )
            first: set[int] | None = None
            while (response := await call.read()) is not grpc.aio.EOF:
                assert isinstance(response, discovery_pb2.DiscoveryResponse)
                self.responses += 1
                trusted = _bundle_serials(response)
                first = trusted if first is None else first
                if self.new_root_acked_at is None and trusted - first:
                    await asyncio.sleep(SLOW_S)
                    self.new_root_acked_at = time.monotonic()
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        node=node,
                        type_url=SECRET,
                        resource_names=names,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                    )
                )


def _new_ca(run_dir: Path, old: CertificateAuthority) -> CertificateAuthority | None:
    """The CA replacing ``old``: staged in ``ca-next/``, or in ``ca/`` once the rotation
    finished (read only; None: no new CA yet, or caught between the two)."""
    for directory in (run_dir / "ca-next", run_dir / "ca"):
        try:
            ca = read_ca(directory)
        except (CaError, FileNotFoundError):
            continue
        if ca.root != old.root:
            return ca
    return None


def _server_certificate(address: str, root: x509.Certificate) -> x509.Certificate:
    """The certificate a TLS server at ``address`` presents, verified against ``root``."""
    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=_pem(root).decode())
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
    return text


def _admin_get_at(config_file: Path, path: str) -> str:
    """GET ``path`` on the admin socket beside an Envoy's bootstrap."""
    connection = _UnixHTTPConnection(config_file.with_name(ADMIN_SOCKET))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    assert response.status == 200, (response.status, body)
    return body


def _held_by_envoy(config_file: Path) -> tuple[set[int], set[int]]:
    """(serials of the roots it trusts, serials of the leaf certificates it holds), from its
    admin ``/certs``: the mesh roots sent over SDS (``<inline>``) and the xDS server's, from
    the file the bootstrap's file-based SDS names (``ca-bundle.crt``, watched)."""
    certs = json.loads(_admin_get_at(config_file, "/certs"))["certificates"]
    roots = {int(c["serial_number"], 16) for entry in certs for c in entry.get("ca_cert", [])}
    leaves = {
        int(c["serial_number"], 16)
        for entry in certs
        for c in entry.get("cert_chain", [])
        if c.get("subject_alt_names")
    }
    return roots, leaves


async def test_the_root_rotates_under_load_without_a_failed_call(mesh: Mesh) -> None:
    await wait_converged(mesh)
    old = _mesh_ca(mesh)
    old_client = _issue(old, workload_identity("orders"))
    payments = mesh.replica("payments/v1-0")
    slow = _SlowNode(mesh)
    first_new_certificate: list[float] = []

    async def watch_payments() -> None:
        """Note when payments' sidecar first serves a certificate from the new root (a TLS
        handshake trusting the new root alone, with a client certificate from it)."""
        while not first_new_certificate:
            new = _new_ca(mesh.run_dir, old)
            if new is not None:
                client = _issue(new, workload_identity("orders"))
                outcome = await asyncio.to_thread(
                    tls_probe, payments.sidecar_inbound, _pem(new.root), client
                )
                if outcome.startswith("accepted"):
                    first_new_certificate.append(time.monotonic())
            await asyncio.sleep(0.1)

    async def rotate() -> subprocess.CompletedProcess[str]:
        async def served() -> bool:
            return slow.responses > 0

        await eventually(served, timeout=10, what="the slow node is served its secrets")
        done = await asyncio.to_thread(
            grpcmesh, "ca", "rotate", "--state-dir", str(mesh.run_dir), "--timeout", "30"
        )
        ended["rotation"] = time.monotonic()
        return done

    ended: dict[str, float] = {}
    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        slow_task = group.create_task(slow.run())
        watcher = group.create_task(watch_payments())
        rotation = group.create_task(rotate())
        # Open loop, 8 orders/s for 20 s; the rotation (~4 s with the slow node, after the
        # CLI's start: 4-10 s on a busy machine) inside it.
        report = await run_load(mesh.state.ingress, orders=LOAD_ORDERS, rate=8.0, deadline_s=10.0)
        ended["load"] = time.monotonic()
        done = await rotation
        slow_task.cancel()
        watcher.cancel()
    assert ended["rotation"] < ended["load"], "the rotation ended after the load"
    # Nothing was signed by the new root before the slow node trusted it.
    assert slow.new_root_acked_at is not None and first_new_certificate
    assert first_new_certificate[0] > slow.new_root_acked_at, (
        "a sidecar held a certificate from the new root "
        f"{slow.new_root_acked_at - first_new_certificate[0]:.2f} s before every node trusted it"
    )
    assert report.succeeded, (report.statuses, report.error_samples)
    assert report.ok == report.planned == LOAD_ORDERS
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"waiting for {SLOW_NODE}" in done.stdout, done.stdout
    assert "finish: all" in done.stdout, done.stdout

    # Every proxy trusts the new root alone and holds the certificate the control plane issued
    # from it; every sidecar's inbound serves a chain to it and refuses the old root's clients.
    new = _mesh_ca(mesh)
    assert new.root != old.root
    assert not (mesh.run_dir / "ca-next").exists() and not (mesh.run_dir / "ca-rotation").exists()
    new_client = _issue(new, workload_identity("orders"))
    admin = f"http://{mesh.state.control_plane_admin}"
    configs = {mesh.state.ingress_node_id: mesh.run_dir / "ingress" / "envoy.json"} | {
        r.node_id: Path(r.config_file) for r in mesh.state.replicas
    }
    for node_id, config in configs.items():

        async def renewed(node_id: str = node_id, config: Path = config) -> bool:
            roots, leaves = await asyncio.to_thread(_held_by_envoy, config)
            nodes = json.loads(await asyncio.to_thread(_get, f"{admin}/status"))["nodes"]
            issued = {
                int(n["certificate"]["serial"], 16)
                for n in nodes
                if n["id"] == node_id and n["connected"] and n["certificate"]
            }
            return roots == {new.root.serial_number} and bool(leaves & issued)

        await eventually(renewed, timeout=10, what=f"{node_id} holds the new root alone")
    # `grpcmesh ca status` says so too: no rotation in progress, the new root alone.
    shown = await asyncio.to_thread(grpcmesh, "ca", "status", "--state-dir", str(mesh.run_dir))
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["phase"] is None and doc["pending"] == []
    assert [r["serial"] for r in doc["roots"]] == [f"{new.root.serial_number:x}"]
    # The xDS server's certificate is the new root's too: an Envoy reconnecting verifies it.
    server = await asyncio.to_thread(_server_certificate, mesh.state.control_plane_xds, new.root)
    server.verify_directly_issued_by(new.root)
    for replica in mesh.state.replicas:
        accepted = await asyncio.to_thread(
            tls_probe, replica.sidecar_inbound, _pem(new.root), new_client
        )
        assert accepted.startswith("accepted"), (replica.node_id, accepted)
        refused = await asyncio.to_thread(
            tls_probe, replica.sidecar_inbound, _pem(new.root), old_client
        )
        assert refused.startswith("refused"), (replica.node_id, refused)
    print(done.stdout)
    print(
        f"load: {report.ok}/{report.planned} ok in {ended['load'] - started:.1f} s; the rotation "
        f"ended {ended['load'] - ended['rotation']:.1f} s before the last call"
    )
