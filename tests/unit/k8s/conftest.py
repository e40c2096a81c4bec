"""Fixtures: the example MeshServices, the shop method catalog, operator settings for both
providers, and an owner reference. In-process only: no API server, no sockets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpcmesh_control.catalogs import load_catalog
from grpcmesh_control.k8s import OperatorSettings, OwnerRef, Provider
from grpcmesh_control.model import MeshService, MethodCatalog, parse_mesh_service

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "manifests" / "examples"
EXAMPLE_NAMES = ("catalog", "inventory", "orders", "payments")
NAMESPACE = "default"


@pytest.fixture(scope="session")
def catalog() -> MethodCatalog:
    return load_catalog()


@pytest.fixture(scope="session")
def _example_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for name in EXAMPLE_NAMES:
        with (EXAMPLES / f"{name}.yaml").open() as stream:
            docs[name] = yaml.safe_load(stream)
    return docs


@pytest.fixture
def example_docs(_example_docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fresh copies: tests edit them into variants."""
    return copy.deepcopy(_example_docs)


@pytest.fixture
def services(
    example_docs: dict[str, dict[str, Any]], catalog: MethodCatalog
) -> dict[str, MeshService]:
    return {name: parse_mesh_service(doc, catalog=catalog) for name, doc in example_docs.items()}


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings(service_monitor_crd=True)


@pytest.fixture
def appmesh_settings() -> OperatorSettings:
    return OperatorSettings(provider=Provider.APPMESH, service_monitor_crd=True)


def owner_of(name: str) -> OwnerRef:
    return OwnerRef(name=name, uid=f"00000000-0000-0000-0000-{len(name):012d}")
