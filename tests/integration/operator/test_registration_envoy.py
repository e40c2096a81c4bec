"""EndpointSlices in the API reach a real Envoy through the operator's ADS server.

The Envoy is the orders sidecar (``sidecar~orders~0``, from the control-plane tests' harness),
subscribed to the ADS server the operator runs in its own loop. Slices of ``payments-v1`` are
added, marked terminating (drained: not ready) and removed; each step shows in Envoy's
``/clusters``. Finally orders itself becomes Ready: rolled out, an endpoint ready, and its
connected sidecar has ACKed what it is served.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from grpcmesh_control.k8s_runtime import Operator
from tests.integration.operator.conftest import Api, example
from tests.integration.operator.test_reconcile import slice_of, wait_condition, wait_names
from tests.integration.test_control_plane_envoy import Envoy, running_envoy
from tests.loopback import free_port, poll

pytestmark = pytest.mark.slow

CLUSTER = "payments|v1"


async def flags(envoy: Envoy, host: str) -> str | None:
    return (await envoy.hosts(CLUSTER)).get(host)


async def test_endpoint_slices_reach_envoy(api: Api, operator: Operator, tmp_path: Path) -> None:
    for name in ("catalog", "inventory", "payments", "orders"):
        await api.create("meshservices", example(name))
    await wait_names(
        api,
        "deployments",
        {"catalog-v1", "inventory-v1", "orders-v1", "payments-v1", "payments-v2"},
    )
    xds = f"127.0.0.1:{operator.xds_port}"
    port = free_port()
    host = f"127.0.0.1:{port}"
    async with running_envoy(tmp_path, xds) as envoy:

        async def has_cluster() -> bool:
            status, _ = await envoy.get("/ready")
            return status == 200 and CLUSTER in await envoy.clusters()

        await poll(has_cluster, f"Envoy to get {CLUSTER} over ADS", timeout=15)

        await api.create(
            "endpointslices", slice_of("payments-v1", ("127.0.0.1", True, False), port=port)
        )

        async def healthy() -> bool:
            return await flags(envoy, host) == "healthy"

        await poll(healthy, f"{host} healthy in Envoy")

        draining = slice_of("payments-v1", ("127.0.0.1", False, True), port=port)
        await api.patch("endpointslices", "payments-v1-abcde", {"endpoints": draining["endpoints"]})

        async def drained() -> bool:
            return "/failed_eds_health" in (await flags(envoy, host) or "")

        await poll(drained, f"{host} drained (EDS unhealthy) in Envoy")

        await api.delete("endpointslices", "payments-v1-abcde")

        async def gone() -> bool:
            return await flags(envoy, host) is None

        await poll(gone, f"{host} removed from Envoy")

        # orders: rolled out, one ready endpoint, and its (only) sidecar ACKed -> Ready.
        await api.patch(
            "deployments", "orders-v1", {"status": {"updatedReplicas": 2, "availableReplicas": 2}}
        )
        await api.create(
            "endpointslices", slice_of("orders-v1", ("127.0.0.1", True, False), port=free_port())
        )
        body = await wait_condition(api, "orders", "Ready", ("True", "Serving"))
        node = operator.cache.node("sidecar~orders~0")
        assert body["status"]["ackedVersion"] == node.acked_snapshot
