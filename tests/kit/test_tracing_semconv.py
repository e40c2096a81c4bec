"""The kit's spans follow the OpenTelemetry RPC semantic conventions: name
``package.Service/Method``, kind, ``rpc.system``, ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code``, ``server.address`` and ``server.port``; a failed call's span has an
error status."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from grpcmesh_kit import create_tracer_provider
from tests.kit.conftest import echo_settings
from tests.kit.echo_service import build_app

NAME = "grpcmesh.shop.v1.CatalogService/GetProduct"


def provider_for(kind: str, service: str, exporter: InMemorySpanExporter) -> TracerProvider:
    """The kit's own provider (its sampler's fast path) or a plain SDK one (the SDK's path)."""
    if kind == "kit":
        return create_tracer_provider(service, exporter, sampling_ratio=1.0)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def one(spans: list[ReadableSpan], service: str, kind: str, code: int) -> ReadableSpan:
    matches = [
        s
        for s in spans
        if s.resource.attributes.get("service.name") == service
        and s.kind.name == kind
        and (s.attributes or {}).get("rpc.grpc.status_code") == code
    ]
    assert len(matches) == 1, "\n".join(
        f"{s.resource.attributes.get('service.name')} {s.kind.name} {dict(s.attributes or {})}"
        for s in spans
    )
    return matches[0]


@pytest.mark.parametrize("provider_kind", ["kit", "sdk"])
async def test_server_and_client_spans_follow_the_rpc_conventions(provider_kind: str) -> None:
    exporter = InMemorySpanExporter()
    backend_provider = provider_for(provider_kind, "backend", exporter)
    front_provider = provider_for(provider_kind, "front", exporter)
    backend, _ = build_app(echo_settings(service_name="backend"), tracer_provider=backend_provider)
    async with backend.running():
        front, _ = build_app(
            echo_settings(
                service_name="front", downstream="backend", targets={"backend": backend.address}
            ),
            tracer_provider=front_provider,
        )
        async with front.running(), grpc.aio.insecure_channel(front.address) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="a"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="missing"))
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    providers = (front_provider, backend_provider)
    assert all(provider.force_flush(10_000) for provider in providers)
    spans = list(exporter.get_finished_spans())
    for provider in providers:  # after reading: the exporter they share stops with the first
        provider.shutdown()

    conventions = {
        "rpc.system": "grpc",
        "rpc.service": NAME.split("/")[0],
        "rpc.method": "GetProduct",
    }
    servers = {
        "front": one(spans, "front", "SERVER", 0),
        "backend": one(spans, "backend", "SERVER", 0),
    }
    for service, span in servers.items():
        app = front if service == "front" else backend
        assert span.name == NAME
        assert dict(span.attributes or {}) == {
            **conventions,
            "rpc.grpc.status_code": 0,
            "server.address": "127.0.0.1",
            "server.port": app.port,
        }
        assert span.status.status_code == StatusCode.UNSET

    client = one(spans, "front", "CLIENT", 0)
    assert client.name == NAME
    backend_port = int(backend.address.rpartition(":")[2])
    assert dict(client.attributes or {}) == {
        **conventions,
        "rpc.grpc.status_code": 0,
        "server.address": "127.0.0.1",
        "server.port": backend_port,
    }
    assert servers["backend"].parent is not None
    assert servers["backend"].parent.span_id == client.context.span_id

    failed_span = one(spans, "front", "SERVER", grpc.StatusCode.NOT_FOUND.value[0])
    assert failed_span.name == NAME
    assert failed_span.status.status_code == StatusCode.ERROR
