"""The layers in pyproject.toml's [tool.importlinter] hold (``make lint`` runs lint-imports),
and a forbidden import breaks them: the contracts bite."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.shared import REPO, tool


def _lint_imports(*roots: Path) -> subprocess.CompletedProcess[str]:
    # Wide columns: the report names whole import chains on one line.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(r) for r in roots), "COLUMNS": "250"}
    return subprocess.run(
        [tool("lint-imports"), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = _lint_imports(REPO / "operator", REPO / "services" / "kit")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_core_module_importing_the_operator_breaks_the_build(tmp_path: Path) -> None:
    shutil.copytree(REPO / "operator" / "grpcmesh_control", tmp_path / "grpcmesh_control")
    shutil.copytree(REPO / "services" / "kit" / "grpcmesh_kit", tmp_path / "grpcmesh_kit")
    registry = tmp_path / "grpcmesh_control" / "mesh" / "translate" / "registry.py"
    registry.write_text(
        registry.read_text() + "\nimport grpcmesh_control.cluster.controller.client\n"
    )
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert (
        "The mesh core (model, translate, catalogs, errors) imports no edge BROKEN" in result.stdout
    )
    assert (
        "grpcmesh_control.mesh.translate.registry -> grpcmesh_control.cluster.controller.client"
        in result.stdout
    )
