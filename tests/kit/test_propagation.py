"""One trace, one request id and one shrinking deadline follow a call from service to service."""

from __future__ import annotations

import io
import json
import logging

import grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from grpcmesh_kit import REQUEST_ID_HEADER, configure_logging
from tests.kit.conftest import echo_settings
from tests.kit.echo_service import build_app


async def test_trace_request_id_and_deadline_cross_a_hop() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend, backend_servicer = build_app(
        echo_settings(service_name="backend"), tracer_provider=provider
    )
    async with backend.running():
        front, front_servicer = build_app(
            echo_settings(
                service_name="front", downstream="backend", targets={"backend": backend.address}
            ),
            tracer_provider=provider,
        )
        async with front.running(), grpc.aio.insecure_channel(front.address) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            call = stub.GetProduct(
                catalog_pb2.GetProductRequest(product_id="a"),
                metadata=((REQUEST_ID_HEADER, "req-42"),),
                timeout=3,
            )
            response = await call
            trailers = dict(await call.trailing_metadata() or ())

    assert response.product.name == "front>echo"
    assert trailers[REQUEST_ID_HEADER] == "req-42"
    assert [seen["request_id"] for seen in (*front_servicer.seen, *backend_servicer.seen)] == [
        "req-42",
        "req-42",
    ]
    # The backend saw the caller's 3 s budget minus what the front had used, never its own 5 s.
    front_left = front_servicer.seen[0]["remaining"]
    backend_left = backend_servicer.seen[0]["remaining"]
    assert front_left is not None and backend_left is not None
    # gRPC rounds grpc-timeout up when it encodes it, and the server reads its clock from a
    # cache, so a hop may see a few ms more than was sent; the point is 3 s, not the kit's 5 s.
    wire_slack = 0.05
    assert 0 < front_left <= 3 + wire_slack
    assert 0 < backend_left <= front_left + wire_slack

    spans = exporter.get_finished_spans()
    assert len(spans) == 3  # front server, front client, backend server
    assert len({span.context.trace_id for span in spans}) == 1
    server_spans = [s for s in spans if s.kind.name == "SERVER"]
    client_span = next(s for s in spans if s.kind.name == "CLIENT")
    backend_span = next(
        s
        for s in server_spans
        if s.parent and s.parent.span_id != 0 and s.parent.span_id == client_span.context.span_id
    )
    assert backend_span.name == "grpcmesh.shop.v1.CatalogService/GetProduct"
    assert backend_span.attributes is not None
    assert backend_span.attributes["rpc.grpc.status_code"] == 0


async def test_json_logs_carry_trace_span_and_request_id() -> None:
    stream = io.StringIO()
    configure_logging("echo", "INFO", "json")
    handler = logging.getLogger().handlers[-1]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    app, _ = build_app(echo_settings())
    async with app.running(), grpc.aio.insecure_channel(app.address) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        try:
            await stub.GetProduct(
                catalog_pb2.GetProductRequest(product_id="crash"),
                metadata=((REQUEST_ID_HEADER, "req-7"),),
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INTERNAL
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    crash = next(r for r in records if r["message"].startswith("unhandled error"))
    assert crash["request_id"] == "req-7"
    assert crash["service"] == "echo"
    assert len(crash["trace_id"]) == 32 and len(crash["span_id"]) == 16
    assert crash["level"] == "ERROR"
    assert "secret internal detail" in crash["exc_info"]
