"""Builds and runs the catalog service."""

from __future__ import annotations

import asyncio
import time

import grpc
from opentelemetry.sdk.trace import TracerProvider

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from grpcmesh_catalog.cache import Clock
from grpcmesh_catalog.servicer import CatalogServicer
from grpcmesh_catalog.settings import CatalogSettings
from grpcmesh_catalog.storage import MIGRATIONS
from grpcmesh_kit import ServiceApp, Store


def build_app(
    settings: CatalogSettings,
    *,
    clock: Clock = time.monotonic,
    tracer_provider: TracerProvider | None = None,
) -> ServiceApp[CatalogSettings]:
    """``clock`` drives cache expiry; tests pass a fake one."""
    app = ServiceApp(settings, tracer_provider=tracer_provider)
    store = Store(settings.db_path, MIGRATIONS)
    servicer = CatalogServicer(store, lambda: app.settings, clock)

    def register(server: grpc.aio.Server) -> None:
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(servicer, server)

    app.add_service(catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"], register)
    app.on_start(store.open)
    app.on_stop(store.close)
    return app


def main() -> None:
    asyncio.run(build_app(CatalogSettings.load()).run())
