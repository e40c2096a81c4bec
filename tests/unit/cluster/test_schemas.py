"""Every rendered object is valid for the system that consumes it: built-in kinds against the
Kubernetes OpenAPI schemas (strict: an unknown or misplaced field fails) for the oldest
supported and the newest bundled Kubernetes version, custom kinds against the published CRDs
in ../shared/contracts."""

from __future__ import annotations

import pytest

from grpcmesh_control.cluster.objects import OperatorSettings, desired_objects
from grpcmesh_control.mesh.model import MeshService
from tests.unit.examples import EXAMPLE_NAMES

from .checks import K8S_VERSIONS, is_custom, validate_object
from .conftest import NAMESPACE, owner_of


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
@pytest.mark.parametrize("provider", ["native", "appmesh"])
def test_every_object_validates(
    services: dict[str, MeshService],
    settings: OperatorSettings,
    appmesh_settings: OperatorSettings,
    name: str,
    provider: str,
) -> None:
    chosen = settings if provider == "native" else appmesh_settings
    objects = desired_objects(
        services[name], namespace=NAMESPACE, owner=owner_of(name), settings=chosen
    )
    assert any(not is_custom(o) for o in objects) and any(is_custom(o) for o in objects)
    for obj in objects:
        validate_object(obj)


def test_both_ends_of_the_version_range() -> None:
    assert K8S_VERSIONS[0] == "1.31.0"
    assert K8S_VERSIONS[1] >= "1.37.0"
