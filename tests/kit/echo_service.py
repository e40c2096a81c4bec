"""A tiny service on the kit for the kit's own tests.

It serves CatalogService (a real proto from protos/) with behaviour the tests steer: an optional
delay, a kit error or a crash on chosen product ids, and a downstream call through the kit's
channel factory. Runnable as a process: ``python tests/kit/echo_service.py``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2
from grpcmesh_kit import InvalidArgument, KitSettings, NotFound, ServiceApp, current_rpc
from grpcmesh_kit.workers import WORKER_ENV

CATALOG = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]


class EchoSettings(KitSettings):
    service_name: str = "echo"
    delay_ms: int = 0
    startup_delay_ms: int = 0
    """How long the start hook takes: the window in which health must say NOT_SERVING."""
    slow_worker: int = -1
    """With ``workers`` > 1: the worker (by index) whose start hook takes
    ``slow_worker_startup_ms`` instead, so the others are bound before it."""
    slow_worker_startup_ms: int = 0
    downstream: str = ""
    """If set, GetProduct also calls GetProduct on this service (via app.channels)."""


class EchoCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, app: ServiceApp[EchoSettings]) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.ListProductsResponse:
        return catalog_pb2.ListProductsResponse()

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> catalog_pb2.GetProductResponse:
        rpc = current_rpc.get()
        self.seen.append(
            {
                "request_id": rpc.request_id if rpc else None,
                "remaining": rpc.time_remaining() if rpc else None,
            }
        )
        settings = self.app.settings
        if settings.delay_ms:
            await asyncio.sleep(settings.delay_ms / 1000)
        if request.product_id == "":
            raise InvalidArgument("product_id", "must not be empty")
        if request.product_id == "missing":
            raise NotFound("product 'missing' does not exist")
        if request.product_id == "crash":
            raise RuntimeError("secret internal detail")
        name = "echo"
        if request.product_id == "pid":
            name = str(os.getpid())  # which worker process answered
        if settings.downstream:
            stub = catalog_pb2_grpc.CatalogServiceStub(
                self.app.channels.channel(settings.downstream)
            )
            downstream = await stub.GetProduct(request, timeout=5)
            name = f"{settings.service_name}>{downstream.product.name}"
        return catalog_pb2.GetProductResponse(
            product=catalog_pb2.Product(
                product_id=request.product_id,
                name=name,
                description=request.product_id,
                price=common_pb2.Money(currency_code="USD", amount_minor=100),
            )
        )


def build_app(
    settings: EchoSettings, **kwargs: Any
) -> tuple[ServiceApp[EchoSettings], EchoCatalog]:
    app = ServiceApp(settings, **kwargs)
    servicer = EchoCatalog(app)

    async def warm_up() -> None:
        worker = os.environ.get(WORKER_ENV, "")
        slow = worker.split(":")[0] == str(settings.slow_worker)
        delay = settings.slow_worker_startup_ms if slow else settings.startup_delay_ms
        await asyncio.sleep(delay / 1000)

    app.on_start(warm_up)
    app.add_service(
        CATALOG,
        lambda server: catalog_pb2_grpc.add_CatalogServiceServicer_to_server(servicer, server),
    )
    return app, servicer


if __name__ == "__main__":
    app, _ = build_app(EchoSettings())
    asyncio.run(app.run())
