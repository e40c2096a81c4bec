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
