"""Builds and runs the inventory service."""

from __future__ import annotations

import asyncio
import logging

import grpc
from opentelemetry.sdk.trace import TracerProvider

from grpcmesh.shop.v1 import inventory_pb2, inventory_pb2_grpc
from grpcmesh_inventory import storage
from grpcmesh_inventory.servicer import InventoryServicer
from grpcmesh_inventory.settings import InventorySettings
from grpcmesh_kit import ServiceApp, Store

log = logging.getLogger(__name__)


def build_app(
    settings: InventorySettings, *, tracer_provider: TracerProvider | None = None
) -> ServiceApp[InventorySettings]:
    app = ServiceApp(settings, tracer_provider=tracer_provider)
    store = Store(settings.db_path, storage.MIGRATIONS)
    servicer = InventoryServicer(store)

    def register(server: grpc.aio.Server) -> None:
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server(servicer, server)

    async def seed() -> None:
        seed_stock = dict(app.settings.seed_stock)
        created = await store.run(lambda conn: storage.seed_stock(conn, seed_stock))
        log.info("seeded stock for %d of %d products", created, len(seed_stock))

    app.add_service(inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"], register)
    app.on_start(store.open)
    app.on_start(seed)
    app.on_stop(store.close)
    return app


def main() -> None:
    asyncio.run(build_app(InventorySettings.load()).run())
