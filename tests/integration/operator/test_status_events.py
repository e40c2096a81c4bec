"""Status follows events, not the periodic resync: with a resync interval of an hour, an
EndpointSlice change and a sidecar's ACK still reach the MeshService's status in seconds.

kmock has no controllers: the tests play the Deployment controller (patching a Deployment's
status) and the EndpointSlice controller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from grpcmesh_control.k8s_runtime import Operator
from tests.integration.operator.conftest import Api, example, operator_settings, running
from tests.integration.operator.test_reconcile import condition, slice_of, wait_names
from tests.integration.test_control_plane_envoy import running_envoy
from tests.loopback import free_port, poll

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


async def test_rollout_progress_moves_the_status(api: Api) -> None:
    """A rollout that changes no endpoint (the new pods are not ready yet, then they are)
    still reaches Ready: the Deployment's own status events refresh its owner.

    kopf re-handles an object when its own patch never shows up in the watch (kmock has no
    resourceVersions) after ``consistency_timeout``; set far away, only events can move it."""
    settings = operator_settings(api, resync_interval=NEVER, consistency_timeout=NEVER)
    async with running(settings) as op:
        await _roll_out_catalog(api, op)


async def settled(op: Operator, quiet: float = 1.0, timeout: float = 15.0) -> None:
    """Wait until the operator has not reconciled for ``quiet`` seconds (kopf re-handles a new
    object a few times as its own patches come back), so what follows has one possible cause."""

    def count() -> float:
        return sum(
            sample.value
            for metric in op.operator_metrics.reconciles.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = count(), loop.time()
    while loop.time() - since < quiet:
        if loop.time() > deadline:
            raise AssertionError(f"the operator kept reconciling for {timeout} s")
        await asyncio.sleep(0.1)
        if (now := count()) != last:
            last, since = now, loop.time()


async def _roll_out_catalog(api: Api, op: Operator) -> None:
    await api.create("meshservices", example("catalog"))
    await wait_names(api, "deployments", {"catalog-v1"})
    await api.create("endpointslices", slice_of("catalog-v1", ("10.0.0.1", True, False)))
    await wait_status(
        api, "catalog", "rolling out", lambda b: condition(b, "Ready") == ("False", "Progressing")
    )
    rolled_out = {"status": {"updatedReplicas": 2, "availableReplicas": 2}}
    await api.patch("deployments", "catalog-v1", rolled_out)
    await wait_status(
        api,
        "catalog",
        "rolled out, awaiting the ACK",
        lambda b: condition(b, "Ready") == ("False", "AwaitingAck"),
    )
    # Once kopf is done with the creation, one replica becomes unavailable while the
    # EndpointSlice keeps its one ready address: only the Deployment's event can tell.
    await settled(op)
    await api.patch("deployments", "catalog-v1", {"status": {"availableReplicas": 1}})
    await wait_status(
        api,
        "catalog",
        "a replica unavailable",
        lambda b: condition(b, "Ready") == ("False", "Progressing"),
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
