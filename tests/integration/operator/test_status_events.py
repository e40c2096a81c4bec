"""Status follows events, not the periodic resync: with a resync interval of an hour, an
EndpointSlice change and a sidecar's ACK still reach the MeshService's status in seconds.

kmock has no controllers: the tests play the Deployment controller (patching a Deployment's
status, which no event reports to the operator) and the EndpointSlice controller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from grpcmesh_control.k8s_runtime import Operator
from tests.integration.operator.conftest import (
    Api,
    example,
    free_port,
    operator_settings,
    poll,
    running,
)
from tests.integration.operator.test_reconcile import condition, slice_of, wait_names
from tests.integration.test_control_plane_envoy import running_envoy

WITHIN = 5.0  # seconds: far below the resync interval, above the debounce and kopf's latency
NEVER = 3600.0


@pytest.fixture
async def quiet_operator(api: Api) -> AsyncIterator[Operator]:
    """An operator whose periodic resync never runs during a test."""
    async with running(operator_settings(api, resync_interval=NEVER)) as op:
        yield op


async def wait_status(
    api: Api, name: str, what: str, check: Any, timeout: float = WITHIN
) -> dict[str, Any]:
    async def matches() -> dict[str, Any] | None:
        body = await api.get("meshservices", name)
        return body if body is not None and check(body) else None

    return await poll(matches, f"{name}: {what}", timeout=timeout)


async def test_endpoint_slice_changes_move_the_status(api: Api, quiet_operator: Operator) -> None:
    await api.create("meshservices", example("payments"))
    await wait_names(api, "deployments", {"payments-v1", "payments-v2"})
    await wait_status(
        api, "payments", "Registered", lambda b: condition(b, "Registered") is not None, 10.0
    )
    for name in ("payments-v1", "payments-v2"):
        await api.patch(
            "deployments", name, {"status": {"updatedReplicas": 1, "availableReplicas": 1}}
        )

    await api.create("endpointslices", slice_of("payments-v1", ("10.0.0.1", True, False)))
    body = await wait_status(
        api,
        "payments",
        "one ready endpoint",
        lambda b: b["status"].get("endpoints") == {"ready": 1, "total": 1},
    )
    # The same pass read the rollout back: only the ACK is missing.
    assert condition(body, "Ready") == ("False", "AwaitingAck")

    draining = slice_of("payments-v1", ("10.0.0.1", False, True))
    await api.patch("endpointslices", "payments-v1-abcde", {"endpoints": draining["endpoints"]})
    body = await wait_status(
        api,
        "payments",
        "the endpoint drained",
        lambda b: b["status"].get("endpoints") == {"ready": 0, "total": 1},
    )
    assert condition(body, "Ready") == ("False", "NoReadyEndpoints")

    await api.delete("endpointslices", "payments-v1-abcde")
    await wait_status(
        api,
        "payments",
        "no endpoints",
        lambda b: b["status"].get("endpoints") == {"ready": 0, "total": 0},
    )


@pytest.mark.slow
async def test_sidecar_ack_moves_the_status(
    api: Api, quiet_operator: Operator, tmp_path: Path
) -> None:
    """The orders sidecar (a real Envoy, ``sidecar~orders~0``) connects and ACKs: orders
    becomes Ready with the ACKed version, with no resync in between."""
    for name in ("catalog", "inventory", "payments", "orders"):
        await api.create("meshservices", example(name))
    await wait_names(
        api,
        "deployments",
        {"catalog-v1", "inventory-v1", "orders-v1", "payments-v1", "payments-v2"},
    )
    await api.patch(
        "deployments", "orders-v1", {"status": {"updatedReplicas": 2, "availableReplicas": 2}}
    )
    await api.create(
        "endpointslices", slice_of("orders-v1", ("127.0.0.1", True, False), port=free_port())
    )
    body = await wait_status(
        api,
        "orders",
        "awaiting the ACK",
        lambda b: condition(b, "Ready") == ("False", "AwaitingAck"),
    )
    assert "ackedVersion" not in body["status"]

    async with running_envoy(tmp_path, f"127.0.0.1:{quiet_operator.xds_port}"):
        body = await wait_status(
            api,
            "orders",
            "Ready after the sidecar's ACK",
            lambda b: condition(b, "Ready") == ("True", "Serving"),
            timeout=15.0,  # includes Envoy's start
        )
        node = quiet_operator.cache.node("sidecar~orders~0")
        assert node.acked_snapshot is not None
        assert body["status"]["ackedVersion"] == node.acked_snapshot
