"""The committed golden files are what the core generates now (``make goldens`` rewrites
them; review the diff as part of the change)."""

from __future__ import annotations

from pathlib import Path

from tests.golden.generate import goldens, stale


def test_golden_files_are_current() -> None:
    assert stale(goldens()) == [], "run `make goldens` and review the diff"


def test_every_reference_node_and_object_has_a_golden() -> None:
    names = set(goldens())
    assert {"envoy/sidecar-orders.yaml", "envoy/ingress-gateway.yaml"} <= names
    assert {"envoy/mtls/sidecar-orders.yaml", "envoy/mtls/ingress-gateway.yaml"} <= names
    assert {"k8s/native/payments.yaml", "k8s/appmesh/payments.yaml"} <= names


def test_the_check_fails_on_a_stale_golden(tmp_path: Path) -> None:
    files = goldens()
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert stale(files, tmp_path) == []
    edited = tmp_path / "envoy" / "sidecar-orders.yaml"
    edited.write_text(edited.read_text().replace("timeout", "tmeout", 1))
    (tmp_path / "k8s" / "native" / "retired.yaml").write_text("{}\n")
    assert stale(files, tmp_path) == ["envoy/sidecar-orders.yaml", "k8s/native/retired.yaml"]
