"""Builds and runs the payments service."""

from __future__ import annotations

import asyncio
import random

import grpc
from opentelemetry.sdk.trace import TracerProvider

from grpcmesh.shop.v1 import payments_pb2, payments_pb2_grpc
from grpcmesh_kit import ServiceApp, Store
from grpcmesh_payments.servicer import PaymentsServicer
from grpcmesh_payments.settings import PaymentsSettings
from grpcmesh_payments.storage import MIGRATIONS


def build_app(
    settings: PaymentsSettings,
    *,
    rng: random.Random | None = None,
    tracer_provider: TracerProvider | None = None,
) -> ServiceApp[PaymentsSettings]:
    """``rng`` overrides the failure-injection random source (else seeded by random_seed)."""
    app = ServiceApp(settings, tracer_provider=tracer_provider)
    store = Store(settings.db_path, MIGRATIONS)
    servicer = PaymentsServicer(
        store, lambda: app.settings, rng or random.Random(settings.random_seed)
    )

    def register(server: grpc.aio.Server) -> None:
        payments_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)

    app.add_service(payments_pb2.DESCRIPTOR.services_by_name["PaymentService"], register)
    app.on_start(store.open)
    app.on_stop(store.close)
    return app


def main() -> None:
    asyncio.run(build_app(PaymentsSettings.load()).run())
