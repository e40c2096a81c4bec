"""The reference MeshServices (manifests/examples) and the shop method catalog, as fixtures
shared by the unit tests of every layer (model, translate, k8s). In-process only."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.model import MeshService, MethodCatalog, parse_mesh_service

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
EXAMPLE_NAMES = ("catalog", "inventory", "orders", "payments")


@pytest.fixture(scope="session")
def catalog() -> MethodCatalog:
    return load_catalog()


@cache
def _load_example_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for name in EXAMPLE_NAMES:
        with (EXAMPLES / f"{name}.yaml").open() as stream:
            docs[name] = yaml.safe_load(stream)
    return docs


def example_doc(name: str) -> dict[str, Any]:
    """A fresh copy of manifests/examples/<name>.yaml (callers edit it into variants)."""
    return copy.deepcopy(_load_example_docs()[name])


@pytest.fixture(scope="session")
def _example_docs() -> dict[str, dict[str, Any]]:
    return _load_example_docs()


@pytest.fixture
def example_docs(_example_docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Fresh copies: tests edit them into variants."""
    return copy.deepcopy(_example_docs)


@pytest.fixture
def services(
    example_docs: dict[str, dict[str, Any]], catalog: MethodCatalog
) -> dict[str, MeshService]:
    return {
        name: parse_mesh_service(doc, source=f"{name}.yaml", catalog=catalog)
        for name, doc in example_docs.items()
    }


Mutation = Callable[[dict[str, Any]], object]
"""An edit of a MeshService document in place (a variant of an example)."""


def set_field(path: str, value: object) -> Mutation:
    """Set ``path`` (dotted; a number indexes a list: ``spec.versions.1.weight``), creating
    missing mappings on the way."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate
