"""Fixtures: the reference protos' method catalog and the dashboards built from it. No sockets,
no processes."""

from __future__ import annotations

import pytest
from grafana_foundation_sdk.models.dashboard import Dashboard

from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.model import MethodCatalog
from grpcmesh_control.observability.dashboards import build_dashboards


@pytest.fixture(scope="session")
def catalog() -> MethodCatalog:
    return load_catalog()


@pytest.fixture(scope="session")
def dashboards(catalog: MethodCatalog) -> tuple[Dashboard, ...]:
    return build_dashboards(catalog)
