"""``wait_converged``: ACKs alone do not make a mesh ready. A proxy can ACK the snapshot built
before a replica's endpoint was read, so with ``ready_endpoints`` it also waits until the
control plane has built the newest inputs and they hold those endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from grpcmesh_control.local.clients import NotConverged, wait_converged

NODE = "sidecar~orders~v1-0"


def status(*, built: str, newest: str, ready: int, acked: str | None) -> dict[str, Any]:
    return {
        "version": built,
        "inputs_version": newest,
        "services": [{"name": "payments", "endpoints": {"total": 2, "ready": ready}}],
        "nodes": [
            {"id": NODE, "connected": True, "acked_version": acked, "snapshot_version": built}
        ],
    }


# What the control plane says after two replicas of payments become ready, in order.
TIMELINE = [
    status(built="a", newest="a", ready=0, acked="a"),  # converged, but on the old endpoints
    status(built="a", newest="b", ready=1, acked="a"),  # read one endpoint, not built yet
    status(built="b", newest="b", ready=1, acked="a"),  # built, not ACKed yet
    status(built="b", newest="b", ready=1, acked="b"),  # one of two endpoints pushed
    status(built="c", newest="c", ready=2, acked="c"),  # both pushed and ACKed
]


@pytest.fixture
async def control_plane() -> AsyncIterator[Callable[[list[dict[str, Any]]], TestServer]]:
    servers: list[TestServer] = []

    def serve(timeline: list[dict[str, Any]]) -> TestServer:
        served = iter(timeline)
        last: dict[str, Any] = {}

        async def handle(request: web.Request) -> web.Response:
            nonlocal last
            last = next(served, last)
            return web.json_response(last)

        app = web.Application()
        app.router.add_get("/status", handle)
        server = TestServer(app, host="127.0.0.1", port=0)
        servers.append(server)
        return server

    yield serve
    for server in servers:
        await server.close()


async def test_it_waits_for_the_snapshot_holding_every_ready_endpoint(
    control_plane: Callable[[list[dict[str, Any]]], TestServer],
) -> None:
    server = control_plane(TIMELINE)
    await server.start_server()
    acked = await wait_converged(
        f"127.0.0.1:{server.port}", [NODE], ready_endpoints={"payments": 2}, timeout_s=10
    )
    assert acked == {NODE: "c"}


async def test_without_ready_endpoints_an_ack_of_any_snapshot_is_enough(
    control_plane: Callable[[list[dict[str, Any]]], TestServer],
) -> None:
    server = control_plane(TIMELINE)
    await server.start_server()
    assert await wait_converged(f"127.0.0.1:{server.port}", [NODE], timeout_s=10) == {NODE: "a"}


async def test_it_names_the_endpoints_never_pushed(
    control_plane: Callable[[list[dict[str, Any]]], TestServer],
) -> None:
    server = control_plane(TIMELINE[:4])
    await server.start_server()
    with pytest.raises(NotConverged, match="payments's 2 ready endpoints"):
        await wait_converged(
            f"127.0.0.1:{server.port}", [NODE], ready_endpoints={"payments": 2}, timeout_s=0.5
        )
