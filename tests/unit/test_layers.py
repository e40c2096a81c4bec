"""The layers in pyproject.toml's [tool.importlinter] hold (``make lint`` runs lint-imports),
and a forbidden import breaks them: the contracts bite."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        (
            "mesh/translate/registry.py",
            "grpcmesh_control.cluster.controller.client",
            "Layers: cli > cluster | local > host | observability > mesh",
        ),
        (
            "local/plan.py",
            "grpcmesh_control.cluster.objects.pod",
            "Layers: cli > cluster | local > host | observability > mesh",
        ),
        (
            "mesh/translate/routes.py",
            "grpcmesh_control.mesh.publisher",
            "Inside the mesh core: publisher > xds > translate > catalogs > model",
        ),
        (
            "cluster/objects/desired.py",
            "kopf",
            "The pure cores (mesh model and translation, cluster objects, observability) "
            "touch no socket, API or process",
        ),
    ],
)
def test_a_forbidden_import_breaks_the_build(
    tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    shutil.copytree(REPO / "operator" / "grpcmesh_control", tmp_path / "grpcmesh_control")
    shutil.copytree(REPO / "services" / "kit" / "grpcmesh_kit", tmp_path / "grpcmesh_kit")
    source = tmp_path / "grpcmesh_control" / module
    source.write_text(source.read_text() + f"\nimport {forbidden}\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout
    importer = "grpcmesh_control." + module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {forbidden}" in result.stdout
