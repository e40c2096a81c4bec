"""The CLI around a running mesh: plain output when piped, and ``grpcmesh down``."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.harness import RESOURCES, Mesh, grpcmesh, processes_using

pytestmark = pytest.mark.slow

BOX_DRAWING = set("─│┃━┏┓┗┛┡┩└┘├┤┼╇╈")


def test_piped_status_is_plain_and_unwrapped(tmp_path: Path) -> None:
    # Two files given one by one: --resources takes several.
    mesh = Mesh(tmp_path / "run", [RESOURCES / "catalog.yaml", RESOURCES / "inventory.yaml"])
    state = mesh.start()
    try:
        result = grpcmesh("status", "--state-dir", str(mesh.run_dir))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert not BOX_DRAWING & set(result.stdout), result.stdout
        assert "\x1b[" not in result.stdout  # no colour codes
        # One line per replica, its name and address whole on it, however wide that line is.
        for replica in state.replicas:
            row = [replica.service, replica.replica, replica.app]
            assert sum(line.split()[:3] == row for line in lines) == 1, result.stdout
        assert max(len(line) for line in lines) > 80  # not wrapped at a guessed width
    finally:
        mesh.stop()


def test_down_stops_the_mesh_of_a_state_dir(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path / "run", [RESOURCES / "catalog.yaml"])
    state = mesh.start()
    assert processes_using(mesh.run_dir)

    result = grpcmesh("down", "--state-dir", str(mesh.run_dir))

    assert result.returncode == 0, result.stderr
    assert f"mesh in {state.run_dir} stopped" in result.stdout
    assert mesh.launcher is not None
    assert mesh.launcher.wait(10) == 128 + signal.SIGTERM  # stopped in order, as by Ctrl-C
    assert processes_using(mesh.run_dir) == []
    again = grpcmesh("down", "--state-dir", str(mesh.run_dir))
    assert again.returncode == 2
    assert "no mesh running" in again.stderr
