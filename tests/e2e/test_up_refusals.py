"""``grpcmesh up`` refuses invalid resources before it starts anything, naming file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
