"""``grpcmesh up`` refuses invalid resources before it starts anything, naming file and field."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from grpcmesh_control.mesh.ca import CertificateAuthority
from tests.e2e.harness import INVALID, RESOURCES, grpcmesh, invalid_resource, processes_using

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", sorted(INVALID))
def test_up_refuses_invalid_resources_and_starts_nothing(tmp_path: Path, case: str) -> None:
    resources = tmp_path / "resources"
    shutil.copytree(RESOURCES, resources)
    path, field = invalid_resource(case, resources)
    run_dir = tmp_path / "run"

    result = grpcmesh("up", "--state-dir", str(run_dir), "--resources", str(resources))

    assert result.returncode == 1, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    assert message.startswith("error: "), message  # a refusal, not a crash
    assert path.name in message and field in message, message
    assert not run_dir.exists()  # refused before the run directory was touched
    assert processes_using(run_dir) == []


ALIAS_BOMB = """\
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata:
  name: bomb
  labels: {team: shop}
spec:
  grpc: {port: 9000, services: [test.v1.Bomb]}
  config:
    l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
""" + "".join(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))


@pytest.mark.timeout(60)
def test_up_refuses_a_yaml_alias_bomb_at_once(tmp_path: Path) -> None:
    """The CLI reads resources through the same bounds as the control plane: the 1.4 KB bomb
    that held a control plane past 4.8 GB is refused, by name, well within the CLI's bound."""
    resources = tmp_path / "resources"
    shutil.copytree(RESOURCES, resources)
    (resources / "bomb.yaml").write_text(ALIAS_BOMB)
    run_dir = tmp_path / "run"

    result = grpcmesh("up", "--state-dir", str(run_dir), "--resources", str(resources), timeout=30)

    assert result.returncode == 1, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    assert "bomb.yaml" in message and "values once YAML aliases are expanded" in message, message
    assert not run_dir.exists()


def test_up_refuses_an_ingress_key_that_is_not_the_certificates_and_starts_nothing(
    tmp_path: Path,
) -> None:
    now = dt.datetime.now(dt.UTC)
    root = CertificateAuthority.create_root(now)
    cert, key = tmp_path / "gw.crt", tmp_path / "gw.key"
    cert.write_bytes(
        root.issue_serving(["127.0.0.1"], now, validity=dt.timedelta(1)).cert_chain_pem()
    )
    key.write_bytes(root.issue_serving(["127.0.0.1"], now, validity=dt.timedelta(1)).key_pem())
    run_dir = tmp_path / "run"
    tls = ("--ingress-tls-cert", str(cert), "--ingress-tls-key", str(key))

    result = grpcmesh("up", "--state-dir", str(run_dir), "--resources", str(RESOURCES), *tls)

    assert result.returncode == 1, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    assert message.startswith(f"error: ingress TLS: {key}: not the key of"), message
    assert not run_dir.exists()
    # Half the pair is refused as a usage error.
    half = grpcmesh("up", "--state-dir", str(run_dir), "--ingress-tls-cert", str(cert))
    assert half.returncode == 2 and "--ingress-tls-key" in half.stderr, half.stderr
