"""Wires the orders service onto the kit: store, clients, saga runner, servicer, lifecycle."""

from __future__ import annotations

import asyncio
import logging

from opentelemetry.sdk.trace import TracerProvider

from grpcmesh.shop.v1 import orders_pb2, orders_pb2_grpc
from grpcmesh_kit import PageTokens, ServiceApp, Store
from grpcmesh_orders import storage
from grpcmesh_orders.clients import ShopClients
from grpcmesh_orders.runner import OrderNotifier, SagaRunner
from grpcmesh_orders.servicer import OrderServicer
from grpcmesh_orders.settings import OrdersSettings

log = logging.getLogger(__name__)


def build_app(
    settings: OrdersSettings, *, tracer_provider: TracerProvider | None = None
) -> ServiceApp[OrdersSettings]:
    app = ServiceApp(settings, tracer_provider=tracer_provider)
    store = Store(settings.db_path, storage.MIGRATIONS)
    repo = storage.OrderRepository(store)
    notifier = OrderNotifier()
    clients = ShopClients(app.channels.channel, lambda: app.settings.step_deadline_seconds)
    runner = SagaRunner(repo, clients, notifier, lambda: app.settings)
    servicer = OrderServicer(
        repo, runner, notifier, watch_poll_seconds=lambda: app.settings.watch_poll_seconds
    )
    app.add_service(
        orders_pb2.DESCRIPTOR.services_by_name["OrderService"],
        lambda server: orders_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server),
    )

    async def start() -> None:
        await store.open()
        servicer.page_tokens = await PageTokens.from_store(store)
        # Interrupted sagas resume in the background: a slow dependency must not keep this
        # replica from serving (and from answering retries of those very orders).
        await runner.resume_pending()
        runner.start_recovery()

    async def stop() -> None:
        # After the server stopped: no PlaceOrder waits on a saga any more.
        await runner.close()
        await store.close()

    app.on_start(start)
    app.on_stop(stop)
    return app


def main() -> None:
    asyncio.run(build_app(OrdersSettings.load()).run())
