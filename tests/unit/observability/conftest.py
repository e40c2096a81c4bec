"""Fixtures: the reference protos' method catalog, the dashboards built from it, and the
prometheus-operator CRD schemas (the project's shared contracts). No sockets, no processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.models.dashboard import Dashboard

from grpcmesh_control.catalogs import load_catalog
from grpcmesh_control.model import MethodCatalog
from grpcmesh_control.observability import build_dashboards

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS_OPERATOR_CRDS = REPO.parent / "shared" / "contracts" / "prometheus-operator"


@pytest.fixture(scope="session")
def catalog() -> MethodCatalog:
    return load_catalog()


@pytest.fixture(scope="session")
def dashboards(catalog: MethodCatalog) -> tuple[Dashboard, ...]:
    return build_dashboards(catalog)


def crd_schema(plural: str) -> dict[str, Any]:
    """The v1 openAPIV3Schema of ``<plural>.monitoring.coreos.com``."""
    path = PROMETHEUS_OPERATOR_CRDS / f"monitoring.coreos.com_{plural}.yaml"
    # The published contracts live in ../shared beside the checkout (CI has them too).
    assert path.is_file(), f"prometheus-operator contract not found: {path}"
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def unknown_fields(doc: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Fields the API server would prune: jsonschema ignores them, since these schemas do not
    say ``additionalProperties: false``."""
    if isinstance(doc, dict) and "properties" in schema:
        for key, value in doc.items():
            sub = schema["properties"].get(key)
            if sub is None:
                yield f"{path}.{key}"
            else:
                yield from unknown_fields(value, sub, f"{path}.{key}")
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(doc):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")
