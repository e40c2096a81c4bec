"""One trace follows a PlaceOrder from orders into catalog, inventory and payments: the W3C
context crosses real gRPC hops (and the saga's detached task) intact."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from grpcmesh.shop.v1 import orders_pb2, orders_pb2_grpc
from grpcmesh_catalog.main import build_app as build_catalog
from grpcmesh_catalog.settings import CatalogSettings
from grpcmesh_inventory.main import build_app as build_inventory
from grpcmesh_inventory.settings import InventorySettings
from grpcmesh_orders.main import build_app as build_orders
from grpcmesh_orders.settings import OrdersSettings
from grpcmesh_payments.main import build_app as build_payments
from grpcmesh_payments.settings import PaymentsSettings
from tests.services.orders_fixtures import BASE, ORDERS_BASE, place_request


def span_named(spans: list[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    matches = [s for s in spans if s.name == name and s.kind == kind]
    assert len(matches) == 1, [(s.name, s.kind) for s in spans]
    return matches[0]


async def test_place_order_is_one_trace_across_services(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with AsyncExitStack() as stack:
        catalog = build_catalog(
            CatalogSettings(**BASE, db_path=str(tmp_path / "c.db")), tracer_provider=provider
        )
        inventory = build_inventory(
            InventorySettings(**BASE, db_path=str(tmp_path / "i.db"), seed_stock={"sku-0001": 5}),
            tracer_provider=provider,
        )
        payments = build_payments(
            PaymentsSettings(**BASE, db_path=str(tmp_path / "p.db")), tracer_provider=provider
        )
        for app in (catalog, inventory, payments):
            await stack.enter_async_context(app.running())
        orders = build_orders(
            OrdersSettings(
                **ORDERS_BASE,
                db_path=str(tmp_path / "o.db"),
                targets={
                    "catalog": catalog.address,
                    "inventory": inventory.address,
                    "payments": payments.address,
                },
            ),
            tracer_provider=provider,
        )
        await stack.enter_async_context(orders.running())
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(orders.address))
        response = await orders_pb2_grpc.OrderServiceStub(channel).PlaceOrder(
            place_request("trace-1"), timeout=10
        )
        assert response.order.state == orders_pb2.ORDER_STATE_CONFIRMED

    spans = list(exporter.get_finished_spans())
    root = span_named(spans, "grpcmesh.shop.v1.OrderService/PlaceOrder", SpanKind.SERVER)
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    for downstream in (
        "grpcmesh.shop.v1.CatalogService/GetProduct",
        "grpcmesh.shop.v1.InventoryService/ReserveStock",
        "grpcmesh.shop.v1.PaymentService/Charge",
        "grpcmesh.shop.v1.InventoryService/CommitStock",
    ):
        client = span_named(spans, downstream, SpanKind.CLIENT)
        server = span_named(spans, downstream, SpanKind.SERVER)
        # orders' client span is the parent of the callee's server span, across the socket.
        assert server.parent is not None and server.parent.span_id == client.context.span_id
        assert client.parent is not None and client.parent.span_id == root.context.span_id
