"""Fixtures: the reference MeshServices (manifests/examples), the shop method catalog, and a
registry over them with a few endpoints. Everything here is in-process; no sockets."""

from __future__ import annotations

import pytest

from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog
from grpcmesh_control.mesh.translate import Registry

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
