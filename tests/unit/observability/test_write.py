"""``python -m grpcmesh_control.observability write``: every artefact, from one command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from grpcmesh_control.observability import RULES_FILE_NAME, rules_file
from grpcmesh_control.observability.__main__ import main


def test_write_everything(tmp_path: Path, capsys: object) -> None:
    assert main(["write", "--out", str(tmp_path), "--namespace", "grpcmesh"]) == 0
    rules = tmp_path / "rules" / RULES_FILE_NAME
    assert yaml.safe_load(rules.read_text()) == rules_file()
    boards = sorted((tmp_path / "dashboards").glob("*.json"))
    assert "grpcmesh-overview.json" in {p.name for p in boards}
    kube = tmp_path / "kubernetes"
    (rule,) = yaml.safe_load_all((kube / "prometheusrule.yaml").read_text())
    assert (rule["kind"], rule["metadata"]["namespace"]) == ("PrometheusRule", "grpcmesh")
    monitors = list(yaml.safe_load_all((kube / "podmonitors.yaml").read_text()))
    assert [m["kind"] for m in monitors] == ["PodMonitor"] * 3
    maps = list(yaml.safe_load_all((kube / "dashboards.yaml").read_text()))
    assert sorted(f"{json.loads(next(iter(m['data'].values())))['uid']}.json" for m in maps) == [
        p.name for p in boards
    ]


def test_runs_as_a_module(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "grpcmesh_control.observability", "write", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(tmp_path / "rules" / RULES_FILE_NAME) in run.stdout.splitlines()
