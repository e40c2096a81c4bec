"""``make demo``'s path: ``grpcmesh demo --up`` starts a fresh mesh from manifests/examples,
waits until every endpoint is ready and every proxy ACKed, places orders through the ingress,
prints the summary and stops everything, leaving no process behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import grpcmesh, kill_all, processes_using

pytestmark = pytest.mark.slow


def test_demo_up_runs_end_to_end_and_leaves_nothing_running(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    try:
        result = grpcmesh(
            "demo", "--up", "--orders", "40", "--rate", "10", "--state-dir", str(run_dir),
            timeout=150,
        )  # fmt: skip
        leftovers = processes_using(run_dir)
    finally:
        kill_all(processes_using(run_dir))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "every proxy ACKed its config (8 proxies)" in output, output
    assert "calls planned" in output and "result: PASS" in output, output
    assert "mesh stopped" in output, output
    assert leftovers == [], [p.info for p in leftovers]
    assert not (run_dir / "state.json").exists()
