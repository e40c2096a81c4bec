from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from grpcmesh_kit import ServiceApp
from tests.kit.echo_service import EchoCatalog, EchoSettings, build_app


def echo_settings(**overrides: object) -> EchoSettings:
    """Loopback, OS-assigned ports, no drain wait: what in-process tests want."""
    base: dict[str, object] = {"port": 0, "metrics_port": 0, "drain_seconds": 0}
    base.update(overrides)
    return EchoSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def echo() -> AsyncIterator[tuple[ServiceApp[EchoSettings], EchoCatalog]]:
    app, servicer = build_app(echo_settings())
    async with app.running():
        yield app, servicer


@pytest.fixture
async def echo_channel(
    echo: tuple[ServiceApp[EchoSettings], EchoCatalog],
) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(echo[0].address) as channel:
        yield channel
