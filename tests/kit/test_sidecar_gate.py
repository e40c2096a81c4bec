"""With a sidecar configured, SERVING waits for Envoy's /ready: no request meets a proxy that
has no routes yet."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.kit.conftest import echo_settings
from tests.kit.echo_service import build_app


class FakeEnvoyAdmin:
    """Answers /ready like Envoy's admin: 503 while initialising, 200 once LIVE."""

    def __init__(self) -> None:
        self.live = threading.Event()
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ready = self.path == "/ready" and admin.live.is_set()
                self.send_response(200 if ready else 503)
                self.end_headers()
                self.wfile.write(b"LIVE\n" if ready else b"PRE_INITIALIZING\n")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def envoy_admin() -> Iterator[FakeEnvoyAdmin]:
    admin = FakeEnvoyAdmin()
    admin.thread.start()
    yield admin
    admin.server.shutdown()
    admin.server.server_close()


async def test_serving_waits_for_the_sidecar(envoy_admin: FakeEnvoyAdmin) -> None:
    app, _ = build_app(echo_settings(sidecar_admin=envoy_admin.address))
    starting = asyncio.ensure_future(app.start())
    try:
        async with asyncio.timeout(10):
            while not app.port:
                await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(app.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest())
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not starting.done()
            envoy_admin.live.set()
            second = await asyncio.wait_for(watch.read(), 5)
            assert second.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.wait_for(starting, 5)
    finally:
        starting.cancel()
        await app.stop(drain=False)


async def test_sidecar_that_never_gets_ready_fails_the_start(envoy_admin: FakeEnvoyAdmin) -> None:
    from grpcmesh_kit.app import SidecarNotReady

    app, _ = build_app(
        echo_settings(sidecar_admin=envoy_admin.address, sidecar_ready_timeout_seconds=0.3)
    )
    with pytest.raises(SidecarNotReady, match="not ready"):
        await app.start()
    await app.stop(drain=False)
