"""A third-party policy scan of the rendered chart: checkov's Kubernetes checks, run on the
defaults and on a render with every image pinned by digest. Only the deliberate exceptions in
policy_exceptions.yaml may fail, each with its reason, and none of them may be stale.

checkov runs from its own venv (``make checkov``: its pins clash with the dev venv). A missing
checkov fails the test: CI installs it through ``make test``."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from .chart import REPO, render_files

CHECKOV = Path(os.environ.get("GRPCMESH_CHECKOV", REPO / ".tools" / "checkov" / "bin" / "checkov"))
EXCEPTIONS = Path(__file__).with_name("policy_exceptions.yaml")
_DIGEST = "sha256:" + "ab" * 32
_IMAGES = ("operator", "proxy", "gateway")
PINNED: dict[str, Any] = {name: {"image": {"digest": _DIGEST}} for name in _IMAGES}
_TIMEOUT = 300  # seconds: checkov loads every framework's checks, slowly on a busy machine


@dataclass(frozen=True)
class Finding:
    check: str
    obj: str
    """``Kind/name`` of the object checkov flagged."""
    render: str
    """``default`` or ``pinned``."""


@dataclass(frozen=True)
class Scan:
    passed: int
    failed: tuple[Finding, ...]
    checks: frozenset[str]


def _write(directory: Path, name: str, values: dict[str, Any]) -> Path:
    texts = [t for p, t in sorted(render_files(values).items()) if not p.endswith("NOTES.txt")]
    path = directory / f"{name}.yaml"
    path.write_text("\n---\n".join(texts))
    return path


def _object(resource: str) -> str:
    """checkov names objects ``Kind.namespace.name``; the namespace of cluster-scoped ones is
    ``default``."""
    kind, _namespace, name = resource.split(".", 2)
    return f"{kind}/{name}"


@cache
def scan(directory: Path) -> Scan:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `make checkov` (its own venv, .tools/checkov)")
    files = {
        name: _write(directory, name, values)
        for name, values in (("default", {}), ("pinned", PINNED))
    }
    result = subprocess.run(
        [str(CHECKOV), "--framework", "kubernetes", "--skip-download", "--compact",
         "--output", "json", *(arg for f in files.values() for arg in ("-f", str(f)))],
        capture_output=True, text=True, timeout=_TIMEOUT, check=False,
        env=os.environ | {"LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1: some check failed
    reports = json.loads(result.stdout)
    report = next(r for r in (reports if isinstance(reports, list) else [reports]))
    assert report["check_type"] == "kubernetes"
    by_path = {str(path): name for name, path in files.items()}
    failed = tuple(
        Finding(f["check_id"], _object(f["resource"]), by_path[f["file_abs_path"]])
        for f in report["results"]["failed_checks"]
    )
    checks = frozenset(c["check_id"] for c in report["results"]["passed_checks"])
    return Scan(report["summary"]["passed"], failed, checks | {f.check for f in failed})


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    return scan(tmp_path_factory.mktemp("checkov"))


def exceptions() -> Iterator[dict[str, Any]]:
    entries = yaml.safe_load(EXCEPTIONS.read_text())
    for entry in entries:
        assert set(entry) <= {"check", "objects", "reason", "unpinned_only"}, entry
        assert len(entry["reason"].split()) >= 10, f"{entry['check']}: give a real reason"
        yield entry


def allowed(finding: Finding) -> bool:
    return any(
        entry["check"] == finding.check
        and finding.obj in entry["objects"]
        and not (entry.get("unpinned_only") and finding.render == "pinned")
        for entry in exceptions()
    )


def test_the_scan_ran_the_kubernetes_checks(result: Scan) -> None:
    # Both renders, each object against a couple of hundred checks: not an empty scan.
    assert result.passed > 300
    assert {"CKV_K8S_43", "CKV_K8S_15", "CKV2_K8S_6", "CKV_K8S_20"} <= result.checks


def test_only_the_documented_exceptions_fail(result: Scan) -> None:
    unexpected = sorted({f for f in result.failed if not allowed(f)}, key=str)
    assert unexpected == [], "fix the chart, or add a deliberate exception with its reason"


def test_every_exception_is_still_needed(result: Scan) -> None:
    for entry in exceptions():
        for obj in entry["objects"]:
            assert Finding(entry["check"], obj, "default") in result.failed, (entry["check"], obj)


def test_pinning_digests_clears_the_image_findings(result: Scan) -> None:
    pinned = {f.check for f in result.failed if f.render == "pinned"}
    assert not pinned & {"CKV_K8S_43", "CKV_K8S_15"}


def test_every_pod_has_a_network_policy(result: Scan) -> None:
    assert not [f for f in result.failed if f.check == "CKV2_K8S_6"]
