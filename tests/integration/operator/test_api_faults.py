"""Faults of the API server that a real one does not produce on demand, on kmock (which can
answer any request with any status): these are the only operator tests left on the emulator.
Everything the API server decides is proven on the real control plane (tests/cluster)."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock

from grpcmesh_control.cluster.controller import Operator
from tests.integration.operator.conftest import Api, example
from tests.loopback import poll

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def condition(body: dict[str, Any] | None, kind: str) -> tuple[str, str, str] | None:
    for c in ((body or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return c["status"], c["reason"], c.get("message", "")
    return None


async def test_an_api_failing_with_5xx_is_reported_then_recovered_from(
    api: Api, kmock: kmock.KubernetesEmulator, operator: Operator
) -> None:
    """On kmock because a real API server does not fail on demand: while every Deployment
    write gets a 503, the MeshService says Degraded (ApplyFailed, naming the Deployments)
    with a Warning Event, and the objects that could be written are; once the API recovers, the
    next pass creates the Deployments and clears Degraded."""
    failing = asyncio.Event()
    failing.set()
    kmock["post", DEPLOYMENTS][lambda _: failing.is_set()] << 503
    await api.create("meshservices", example("payments"))

    async def degraded() -> dict[str, Any] | None:
        body = await api.get("meshservices", "payments")
        found = condition(body, "Degraded")
        return body if found and found[:2] == ("True", "ApplyFailed") else None

    body = await poll(degraded, "payments Degraded by ApplyFailed")
    message = condition(body, "Degraded")[2]  # type: ignore[index]
    assert "Deployment/payments-v1" in message and "503" in message, message
    assert {c["metadata"]["name"] for c in await api.list("configmaps")} >= {
        "payments-config",
        "payments-envoy-bootstrap",
    }

    async def warned() -> bool:
        return any(e["reason"] == "ApplyFailed" for e in await api.list("events"))

    await poll(warned, "an ApplyFailed Warning event")

    failing.clear()

    async def recovered() -> bool:
        body = await api.get("meshservices", "payments")
        names = {d["metadata"]["name"] for d in await api.list("deployments")}
        found = condition(body, "Degraded")
        return names == {"payments-v1", "payments-v2"} and found is not None and found[0] == "False"

    await poll(recovered, "the Deployments created and Degraded cleared")
