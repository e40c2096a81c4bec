"""/metrics carries the go-grpc-prometheus series, server and client side, and lints clean."""

from __future__ import annotations

import contextlib
import shutil
import subprocess

import grpc
import pytest

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from grpcmesh_kit import ServiceApp
from tests.kit.conftest import echo_settings
from tests.kit.echo_service import CATALOG, EchoCatalog, EchoSettings, build_app
from tests.scrape import scrape, value

SERVICE = CATALOG.full_name
UNARY = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "GetProduct"}


async def test_server_series_after_calls(
    echo: tuple[ServiceApp[EchoSettings], EchoCatalog], echo_channel: grpc.aio.Channel
) -> None:
    app, _ = echo
    stub = catalog_pb2_grpc.CatalogServiceStub(echo_channel)
    for product_id in ("a", "b", "missing", ""):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.GetProduct(catalog_pb2.GetProductRequest(product_id=product_id))
    text = await scrape(app.metrics_address)
    assert value(text, "grpc_server_started_total", **UNARY) == 4
    assert value(text, "grpc_server_handled_total", **UNARY, grpc_code="OK") == 2
    assert value(text, "grpc_server_handled_total", **UNARY, grpc_code="NotFound") == 1
    assert value(text, "grpc_server_handled_total", **UNARY, grpc_code="InvalidArgument") == 1
    assert value(text, "grpc_server_msg_received_total", **UNARY) == 4
    assert value(text, "grpc_server_msg_sent_total", **UNARY) == 2
    assert value(text, "grpc_server_handling_seconds_count", **UNARY) == 4
    assert "grpc_server_started_created" not in text


async def test_client_series_from_the_channel_factory() -> None:
    backend, _ = build_app(echo_settings(service_name="backend"))
    async with backend.running():
        front, _ = build_app(
            echo_settings(service_name="front", targets={"backend": backend.address})
        )
        async with front.running():
            stub = catalog_pb2_grpc.CatalogServiceStub(front.channels.channel("backend"))
            await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="a"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="missing"))
            text = await scrape(front.metrics_address)
    assert value(text, "grpc_client_started_total", **UNARY) == 2
    assert value(text, "grpc_client_handled_total", **UNARY, grpc_code="OK") == 1
    assert value(text, "grpc_client_handled_total", **UNARY, grpc_code="NotFound") == 1
    assert value(text, "grpc_client_msg_received_total", **UNARY) == 1
    assert value(text, "grpc_client_handling_seconds_count", **UNARY) == 2


async def test_promtool_accepts_the_metrics_page(
    echo: tuple[ServiceApp[EchoSettings], EchoCatalog], echo_channel: grpc.aio.Channel
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install Debian's prometheus package (make sysdeps)"
    stub = catalog_pb2_grpc.CatalogServiceStub(echo_channel)
    await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="a"))
    text = await scrape(echo[0].metrics_address)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_the_service_and_its_version_are_on_metrics_and_traces() -> None:
    app, _ = build_app(echo_settings(service_name="reviews", version="v2"))
    async with app.running():
        text = await scrape(app.metrics_address)
    assert value(text, "grpcmesh_service_info", service="reviews", version="v2") == 1
    resource = app.tracer_provider.resource.attributes
    assert (resource["service.name"], resource["service.version"]) == ("reviews", "v2")
