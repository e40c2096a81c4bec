"""kopf peering against kmock: with ``peering`` set, replicas register in the
``ClusterKopfPeering`` and only the highest-priority one handles MeshServices.

kmock knows nothing of kopf's CRD: the tests register the resource and create the peering
object (in a cluster, kopf's CRD and the chart do that).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import kmock
import pytest

from grpcmesh_control.k8s_runtime import Operator
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
