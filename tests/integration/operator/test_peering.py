"""kopf peering against kmock: with ``peering`` set, replicas register in the
``ClusterKopfPeering`` and only the highest-priority one handles MeshServices.

kmock knows nothing of kopf's CRD: the tests register the resource and create the peering
object (in a cluster, kopf's CRD and the chart do that).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import kmock
import pytest

from grpcmesh_control.k8s_runtime import Operator, RuntimeSettings
from grpcmesh_control.k8s_runtime.peering import peering_active
from tests.integration.operator.conftest import Api, example, operator_settings
from tests.integration.operator.test_reconcile import condition, slice_of
from tests.loopback import poll
from tests.operator_thread import running

PEERING = "grpcmesh"
PEERINGS = "/apis/kopf.dev/v1/clusterkopfpeerings"
NEVER = 3600.0  # no periodic resync: only events move the status


@pytest.fixture
async def peering(api: Api, kmock: kmock.KubernetesEmulator) -> str:
    kmock.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
        kind="ClusterKopfPeering",
        singular="clusterkopfpeering",
        namespaced=False,
        verbs={"list", "watch", "get", "create", "patch", "delete"},
    )
    body = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": PEERING},
    }
    status, result = await api.request("POST", PEERINGS, body)
    assert status in (200, 201), result
    return PEERING


async def peers(api: Api) -> dict[str, Any]:
    """kopf's records in the peering object: identity -> {priority, lifetime, lastseen}."""
    status, body = await api.request("GET", f"{PEERINGS}/{PEERING}")
    assert status == 200, body
    found: dict[str, Any] = body.get("status") or {}
    return found


async def readiness(op: Operator) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{op.metrics_port}/readyz") as response,
    ):
        return response.status


async def test_only_the_highest_priority_replica_reconciles(api: Api, peering: str) -> None:
    async with running(
        operator_settings(api, peering=peering, peering_priority=20, resync_interval=NEVER)
    ) as high:

        async def high_registered() -> bool:
            return any(p.get("priority") == 20 for p in (await peers(api)).values())

        await poll(high_registered, "the priority-20 replica in the peering object")

        async with running(
            operator_settings(api, peering=peering, peering_priority=10, resync_interval=NEVER)
        ) as low:

            async def both_registered() -> bool:
                priorities = {p.get("priority") for p in (await peers(api)).values()}
                return priorities == {10, 20}

            await poll(both_registered, "both replicas in the peering object")
            # Only the active replica is ready: the Service sends xDS and webhooks there.
            assert await readiness(high) == 200
            assert await readiness(low) == 503

            await api.create("meshservices", example("payments"))

            async def reconciled_by(op: Operator) -> bool:
                body = await api.get("meshservices", "payments")
                registered = condition(body, "Registered") is not None
                return registered and op.reconciler.known() == [("default", "payments")]

            await poll(lambda: reconciled_by(high), "payments reconciled by priority 20")
            # The paused replica never sees it: no reconcile, nothing in its registry (a
            # short grace, as a running replica would have handled it in the same time).
            await asyncio.sleep(0.5)
            assert low.reconciler.known() == []
            assert low.state.services() == []

            # The active replica's status follower writes (it checked the peering itself).
            await api.create("endpointslices", slice_of("payments-v1", ("10.0.0.1", True, False)))

            async def counted() -> bool:
                body = await api.get("meshservices", "payments") or {}
                return (body.get("status") or {}).get("endpoints") == {"ready": 1, "total": 1}

            await poll(counted, "the endpoint in payments' status", timeout=5)


def test_peering_is_off_unless_named() -> None:
    assert RuntimeSettings.from_env({}).peering is None  # standalone: local and dev
    settings = RuntimeSettings.from_env(
        {"GRPCMESH_PEERING": PEERING, "GRPCMESH_PEERING_PRIORITY": "5"}
    )
    assert (settings.peering, settings.peering_priority) == (PEERING, 5)


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def record(priority: int, seen_ago: float = 0.0, lifetime: int = 60) -> dict[str, Any]:
    seen = NOW - timedelta(seconds=seen_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("peers", "active"),
    [
        ({}, False),  # not registered yet: kopf is not handling events either
        ({"me": record(10)}, True),
        ({"me": record(10), "other": record(5)}, True),
        ({"me": record(10), "other": record(20)}, False),
        ({"me": record(10), "other": record(10)}, False),  # equal priorities all pause
        ({"me": record(10), "other": record(20, seen_ago=120)}, True),  # a dead peer
        ({"me": record(10), "gone": None}, True),  # a record kopf deleted
    ],
)
def test_the_resync_pauses_with_kopf(peers: dict[str, Any], active: bool) -> None:
    """The operator's own writers (resync, status follower) follow kopf's peering rule."""
    assert peering_active(peers, 10, NOW) is active
