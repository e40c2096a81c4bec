"""The breaking-change gate really gates: buf breaking against the released API image fails on
a removed or retyped field, and passes on the protos as they are."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "protos" / "baseline" / "image.json"
BUF = Path(sys.executable).parent / "buf"


def buf_breaking(workdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BUF_CACHE_DIR": str(workdir / ".buf-cache")}
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(BASELINE)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A copy of the module (buf.yaml + protos) to mutate."""
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "protos", tmp_path / "protos", ignore=shutil.ignore_patterns("baseline"))
    return tmp_path


def edit(workspace: Path, old: str, new: str) -> None:
    path = workspace / "protos" / "grpcmesh" / "shop" / "v1" / "payments.proto"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_current_protos_are_compatible(workspace: Path) -> None:
    result = buf_breaking(workspace)
    assert result.returncode == 0, result.stdout + result.stderr


def test_removed_field_is_breaking(workspace: Path) -> None:
    edit(workspace, "  string decline_reason = 6;\n", "")
    result = buf_breaking(workspace)
    assert result.returncode != 0
    assert "decline_reason" in result.stdout + result.stderr


def test_retyped_field_is_breaking(workspace: Path) -> None:
    edit(
        workspace,
        "  string order_id = 2;\n  string customer_id = 3;",
        "  int64 order_id = 2;\n  string customer_id = 3;",
    )
    result = buf_breaking(workspace)
    assert result.returncode != 0
    assert "order_id" in result.stdout + result.stderr
