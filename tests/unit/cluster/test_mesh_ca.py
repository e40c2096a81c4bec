"""The mesh root's Secret (cluster.objects.mesh_ca): the layout cert-manager also writes, a
round trip, a user's intermediate, and a broken Secret named with its key."""

from __future__ import annotations

import base64
import datetime as dt

import kubernetes_validate
import pytest

from grpcmesh_control.cluster.objects.mesh_ca import mesh_ca_from_secret, mesh_ca_secret
from grpcmesh_control.mesh.ca import CaError, CertificateAuthority

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def root() -> CertificateAuthority:
    return CertificateAuthority.create_root(NOW)


def test_the_secret_is_a_valid_tls_secret_that_round_trips(root: CertificateAuthority) -> None:
    secret = mesh_ca_secret(root, "grpcmesh-mesh-ca", "grpcmesh-system")
    kubernetes_validate.validate(secret, "1.35", strict=True)
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    again = mesh_ca_from_secret(secret)
    assert again.certificate == root.certificate and again.root == root.certificate


def test_a_broken_secret_is_named_with_its_key(root: CertificateAuthority) -> None:
    secret = mesh_ca_secret(root, "mesh-ca", "ns")
    missing = {**secret, "data": {k: v for k, v in secret["data"].items() if k != "tls.key"}}
    with pytest.raises(CaError, match=r"Secret ns/mesh-ca: data\.tls\.key is missing"):
        mesh_ca_from_secret(missing)
    garbled = {**secret, "data": {**secret["data"], "tls.crt": "***"}}
    with pytest.raises(CaError, match=r"data\.tls\.crt is not base64"):
        mesh_ca_from_secret(garbled)
    other = CertificateAuthority.create_root(NOW)
    wrong_key = {
        **secret,
        "data": {**secret["data"], "tls.key": base64.b64encode(other.pem()[1]).decode()},
    }
    with pytest.raises(CaError, match="Secret ns/mesh-ca: the CA key does not belong"):
        mesh_ca_from_secret(wrong_key)
