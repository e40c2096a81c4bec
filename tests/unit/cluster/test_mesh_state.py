"""EndpointSlices -> registry endpoints (the operator's ``MeshState``, no API): ready, draining,
foreign slices."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from grpcmesh_control.cluster.controller import MeshState
from grpcmesh_control.mesh.model import Endpoint, MeshService
from tests.cluster.operator_harness import slice_of as bare_slice


@pytest.fixture
def example(example_docs: dict[str, dict[str, Any]]) -> Any:
    """``example(name)``: an example MeshService as the API returns it."""

    def make(name: str) -> dict[str, Any]:
        doc = copy.deepcopy(example_docs[name])
        doc["metadata"] |= {"namespace": "default", "uid": f"uid-{name}"}
        return doc

    return make


def slice_of(service: str, *endpoints: tuple[str, bool, bool], port: int = 15006) -> dict[str, Any]:
    """An EndpointSlice as the API returns it (in the ``default`` namespace)."""
    body = bare_slice(service, *endpoints, port=port)
    body["metadata"]["namespace"] = "default"
    return body


def test_slices_become_endpoints_by_version(example: Any) -> None:
    published: list[dict[str, tuple[Endpoint, ...]]] = []

    def publish(_: Iterable[MeshService], endpoints: Mapping[str, Iterable[Endpoint]]) -> None:
        published.append({k: tuple(v) for k, v in endpoints.items()})

    state = MeshState(publish)
    assert state.set_service(example("payments")) is not None
    state.set_slice(
        slice_of(
            "payments-v2",
            ("10.0.0.1", True, False),
            ("10.0.0.2", False, True),  # terminating: drained
            ("10.0.0.3", True, True),  # still ready but terminating: drained too
            port=15006,
        )
    )
    state.set_slice(slice_of("not-a-mesh-service", ("10.9.9.9", True, False)))
    assert published[-1] == {
        "payments": (
            Endpoint("10.0.0.1", 15006, "v2", True),
            Endpoint("10.0.0.2", 15006, "v2", False),
            Endpoint("10.0.0.3", 15006, "v2", False),
        )
    }
    state.drop_slice("default", "payments-v2-abcde")
    assert published[-1] == {"payments": ()}

    bad = example("payments")
    bad["spec"]["grpc"]["port"] = "not a port"
    assert state.set_service(bad) is None
    assert state.spec_error("default", "payments") is not None
    assert state.service("default", "payments") is not None  # the last valid spec stays


def test_events_that_leave_the_mesh_as_it_is_publish_nothing(example: Any) -> None:
    """Most watch events are status and annotation writes (kopf's, the operator's own): they
    must not recompute the mesh's inputs, an O(services) step, each time."""
    published: list[int] = []
    state = MeshState(lambda services, endpoints: published.append(len(list(services))))
    payments = example("payments")
    state.set_service(payments)
    state.set_slice(slice_of("payments-v1", ("10.0.0.1", True, False)))
    assert len(published) == 2

    churned = copy.deepcopy(payments)
    churned["metadata"]["annotations"] = {"grpcmesh.io/last-handled-configuration": "{}"}
    churned["status"] = {"observedGeneration": 3}
    state.set_service(churned)
    relabelled = slice_of("payments-v1", ("10.0.0.1", True, False))
    relabelled["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change": "now"}
    state.set_slice(relabelled)
    assert len(published) == 2

    moved = slice_of("payments-v1", ("10.0.0.2", True, False))
    state.set_slice(moved)
    changed = copy.deepcopy(payments)
    changed["spec"]["grpc"]["port"] = 50052
    state.set_service(changed)
    assert len(published) == 4
