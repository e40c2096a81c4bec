"""Fixtures: the example MeshServices, the shop method catalog, operator settings for both
providers, and an owner reference. In-process only: no API server, no sockets."""

from __future__ import annotations

import pytest

from grpcmesh_control.cluster.objects import OperatorSettings, OwnerRef, Provider

NAMESPACE = "default"


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings(service_monitor_crd=True)


@pytest.fixture
def appmesh_settings() -> OperatorSettings:
    return OperatorSettings(provider=Provider.APPMESH, service_monitor_crd=True)


def owner_of(name: str) -> OwnerRef:
    return OwnerRef(name=name, uid=f"00000000-0000-0000-0000-{len(name):012d}")
