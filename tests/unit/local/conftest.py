"""Fixtures: the reference MeshServices and a plan over them with predictable ports."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from grpcmesh_control.local.plan import LocalSettings, Plan, build_plan
from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.model import MeshService, parse_mesh_services_yaml

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "manifests" / "examples"
FIRST_PORT = 20000


def parse(text: str) -> tuple[MeshService, ...]:
    return parse_mesh_services_yaml(text, source="test.yaml", catalog=load_catalog())


@pytest.fixture(scope="session")
def examples() -> tuple[MeshService, ...]:
    return tuple(svc for path in sorted(EXAMPLES.glob("*.yaml")) for svc in parse(path.read_text()))


@pytest.fixture
def settings(tmp_path: Path) -> LocalSettings:
    return LocalSettings(
        run_dir=tmp_path / "run", python="/venv/bin/python", envoy="/venv/bin/envoy"
    )


@pytest.fixture
def plan(examples: tuple[MeshService, ...], settings: LocalSettings) -> Plan:
    return build_plan(examples, itertools.count(FIRST_PORT), settings)
