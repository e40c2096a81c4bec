"""Fixtures: the reference MeshServices (manifests/examples), the shop method catalog, and a
registry over them with a few endpoints. Everything here is in-process; no sockets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpcmesh_control.catalogs import load_catalog
from grpcmesh_control.model import Endpoint, MeshService, MethodCatalog, parse_mesh_service
from grpcmesh_control.translate import Registry

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "manifests" / "examples"
EXAMPLE_NAMES = ("catalog", "inventory", "orders", "payments")


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
    """Fresh copies: tests mutate them to build invalid documents."""
    return copy.deepcopy(_example_docs)


@pytest.fixture
def services(
    example_docs: dict[str, dict[str, Any]], catalog: MethodCatalog
) -> dict[str, MeshService]:
    return {
        name: parse_mesh_service(doc, source=f"{name}.yaml", catalog=catalog)
        for name, doc in example_docs.items()
    }


ENDPOINTS = {
    "catalog": [
        Endpoint("10.0.0.1", 15006, "v1"),
        Endpoint("10.0.0.2", 15006, "v1", ready=False),
    ],
    "inventory": [Endpoint("10.0.1.1", 15006, "v1")],
    "payments": [Endpoint("10.0.2.1", 15006, "v1"), Endpoint("10.0.2.2", 15006, "v2")],
    # orders has none yet: its load assignment must still be sent (empty).
}


@pytest.fixture
def registry(services: dict[str, MeshService], catalog: MethodCatalog) -> Registry:
    return Registry.build(services.values(), ENDPOINTS, catalog)
