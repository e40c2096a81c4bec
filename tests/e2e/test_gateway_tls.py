"""The ingress gateway's TLS for outside clients, end to end (local mode, real Envoys):
``grpcmesh up --ingress-tls-cert/--ingress-tls-key`` makes the ingress serve TLS with that
certificate (over SDS, never in the bootstrap); a client trusting its CA reaches orders
through it, while a plaintext client and a client that trusts another CA are refused; a
rewritten certificate file is served without a restart; and with ``--ingress-client-ca``
only a client presenting a certificate from those CAs gets through. Plaintext ingress (no
certificate given) is what every other e2e test runs.

The mesh is the smallest that shows it: orders alone (one replica, no backends; ``ListOrders``
answers from its own database), its sidecar, the ingress and the control plane.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from grpcmesh.shop.v1 import orders_pb2, orders_pb2_grpc
from grpcmesh_control.mesh.ca import CertificateAuthority, Issued
from grpcmesh_control.mesh.model.identity import workload_identity
from grpcmesh_control.mesh.translate.tls import GATEWAY_CERTIFICATE_SECRET
from tests.e2e.harness import RESOURCES, Mesh, eventually

pytestmark = pytest.mark.slow

NOW = dt.datetime.now(dt.UTC)
CALL_TIMEOUT_S = 5.0


def _orders_alone(directory: Path) -> Path:
    """orders with no backends: the only service the mesh runs."""
    doc = yaml.safe_load((RESOURCES / "orders.yaml").read_text())
    doc["spec"].pop("backends")
    path = directory / "orders.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Pki:
    """A CA of the test's own (no client trusts the mesh CA) and the files given to ``up``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority.create_root(NOW)
        self.ca_pem = self.ca.pem()[2]
        self.cert, self.key = directory / "ingress.crt", directory / "ingress.key"
        self.install(self.ca)

    def install(self, ca: CertificateAuthority) -> None:
        """Write a serving certificate for 127.0.0.1 from ``ca`` (the key first, then the
        chain, each replaced whole, as a renewal tool would)."""
        issued = ca.issue_serving(["127.0.0.1"], NOW, validity=dt.timedelta(days=1))
        for path, data in ((self.key, issued.key_pem()), (self.cert, issued.cert_chain_pem())):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.chmod(0o600)
            tmp.replace(path)


def _mesh(tmp: Path, pki: Pki, *extra: str) -> Mesh:
    return Mesh(
        tmp / "run",
        _orders_alone(tmp),
        up_args=("--ingress-tls-cert", str(pki.cert), "--ingress-tls-key", str(pki.key), *extra),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("gateway-pki"))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Mesh]:
    mesh = _mesh(tmp_path_factory.mktemp("gateway-tls"), pki)
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()


async def _list_orders(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = orders_pb2_grpc.OrderServiceStub(channel)
    try:
        await stub.ListOrders(orders_pb2.ListOrdersRequest(), timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _over_tls(address: str, roots: bytes, client: Issued | None = None) -> grpc.StatusCode:
    """ListOrders through ``address`` over TLS, trusting ``roots``, presenting ``client``."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=None if client is None else client.key_pem(),
        certificate_chain=None if client is None else client.cert_chain_pem(),
    )
    async with grpc.aio.secure_channel(address, credentials) as channel:
        return await _list_orders(channel)


async def _ok(address: str, roots: bytes, client: Issued | None = None) -> bool:
    return await _over_tls(address, roots, client) is grpc.StatusCode.OK


async def test_a_client_trusting_the_certificate_reaches_orders_over_tls(
    mesh: Mesh, pki: Pki
) -> None:
    ingress = mesh.state.ingress
    await eventually(lambda: _ok(ingress, pki.ca_pem), timeout=30, what="orders over TLS")
    # The key reached Envoy over SDS: the bootstrap names neither it nor the files.
    bootstrap = (mesh.run_dir / "ingress" / "envoy.json").read_text()
    key_body = pki.key.read_text().splitlines()[1]
    assert key_body not in bootstrap
    assert "ingress.key" not in bootstrap and GATEWAY_CERTIFICATE_SECRET not in bootstrap


async def test_a_plaintext_client_is_refused(mesh: Mesh, pki: Pki) -> None:
    ingress = mesh.state.ingress
    await eventually(lambda: _ok(ingress, pki.ca_pem), timeout=30, what="orders over TLS")
    async with grpc.aio.insecure_channel(ingress) as channel:
        assert await _list_orders(channel) is grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_certificate_is_refused(
    mesh: Mesh, pki: Pki
) -> None:
    ingress = mesh.state.ingress
    await eventually(lambda: _ok(ingress, pki.ca_pem), timeout=30, what="orders over TLS")
    other = CertificateAuthority.create_root(NOW).pem()[2]
    assert await _over_tls(ingress, other) is grpc.StatusCode.UNAVAILABLE


async def test_a_renewed_certificate_file_is_served_without_a_restart(mesh: Mesh, pki: Pki) -> None:
    ingress, ingress_pid = mesh.state.ingress, mesh.state.ingress_pid
    renewed = CertificateAuthority.create_root(NOW)
    pki.install(renewed)
    new_roots = renewed.pem()[2]
    await eventually(
        lambda: _ok(ingress, new_roots), timeout=15, what="the renewed certificate served"
    )
    assert await _over_tls(ingress, pki.ca_pem) is grpc.StatusCode.UNAVAILABLE
    assert mesh.state.ingress_pid == ingress_pid  # the same Envoy, never restarted
    pki.install(pki.ca)  # as the other tests found it
    await eventually(lambda: _ok(ingress, pki.ca_pem), timeout=15, what="the first one back")


async def test_with_client_cas_only_a_client_with_a_certificate_from_them_gets_through(
    tmp_path: Path, pki: Pki
) -> None:
    clients = CertificateAuthority.create_root(NOW)
    (tmp_path / "clients.crt").write_bytes(clients.pem()[2])
    mesh = _mesh(tmp_path, pki, "--ingress-client-ca", str(tmp_path / "clients.crt"))
    mesh.start()
    try:
        ingress = mesh.state.ingress
        identity = workload_identity("client", "outside", "outside.example")
        client = clients.issue_workload(identity, NOW)
        foreign = CertificateAuthority.create_root(NOW).issue_workload(identity, NOW)
        await eventually(
            lambda: _ok(ingress, pki.ca_pem, client), timeout=30, what="a client with a cert"
        )
        assert await _over_tls(ingress, pki.ca_pem) is grpc.StatusCode.UNAVAILABLE
        assert await _over_tls(ingress, pki.ca_pem, foreign) is grpc.StatusCode.UNAVAILABLE
    finally:
        mesh.stop()
