"""Channels to the local sidecar reconnect quickly once it is back."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from grpcmesh_kit.channels import SIDECAR_WAIT_S, ChannelFactory
from tests.kit.conftest import echo_settings
from tests.loopback import LOCALHOST, free_port

DOWN_S = 1.2
"""How long the sidecar stays away while the app keeps calling (a restart takes about that)."""
BACK_WITHIN_S = 0.8
"""Bound from the sidecar listening again to the app's first call through. gRPC's default
reconnect back-off (1 s, then 1.6 s, ... up to 2 min, +-20 %) takes 0.9 to 1.9 s here."""


async def _check(channel: grpc.aio.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
        return False
    return True


async def test_a_restarted_sidecar_is_reconnected_to_within_a_fraction_of_a_second() -> None:
    address = f"{LOCALHOST}:{free_port()}"
    factory = ChannelFactory(lambda: echo_settings(sidecar_egress=address), [])
    channel = factory.channel("inventory")
    loop = asyncio.get_running_loop()
    try:
        # The sidecar is away: calls fail at once ("failed to connect"), the channel backs off.
        started = loop.time()
        while loop.time() - started < DOWN_S:
            assert not await _check(channel)
            await asyncio.sleep(0.05)
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        assert server.add_insecure_port(address) > 0
        await server.start()
        back = loop.time()
        try:
            while not await _check(channel):
                assert loop.time() - back < BACK_WITHIN_S, "the channel is still backing off"
                await asyncio.sleep(0.02)
        finally:
            await server.stop(None)
    finally:
        await factory.close()


async def test_a_call_waits_briefly_for_a_sidecar_that_is_coming_back() -> None:
    address = f"{LOCALHOST}:{free_port()}"
    factory = ChannelFactory(lambda: echo_settings(sidecar_egress=address), [])
    channel = factory.channel("inventory")
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        while loop.time() - started < DOWN_S:
            # Away: each call waits at most SIDECAR_WAIT_S, then fails as never sent.
            before = loop.time()
            assert not await _check(channel)
            assert loop.time() - before < SIDECAR_WAIT_S + 0.4
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        assert server.add_insecure_port(address) > 0
        await server.start()
        try:
            # Back: the very first call goes through, though the channel was between redials.
            assert await _check(channel)
        finally:
            await server.stop(None)
    finally:
        await factory.close()
