"""The reference shop (catalog, inventory, payments, orders) as specs for the local launcher."""

from __future__ import annotations

from grpcmesh_loadgen.localrun import ServiceSpec
from grpcmesh_loadgen.orders import PRODUCTS

DEPENDENCIES = ("catalog", "inventory", "payments")


def reference_services(
    *,
    stock_per_product: int = 1_000_000,
    decline_rate: float = 0.0,
    payments_seed: int | None = None,
    drain_seconds: float = 0.0,
) -> list[ServiceSpec]:
    """Specs in start order: orders last, with targets pointing at the other three.

    ``decline_rate`` is the share of charges payments declines (those orders end CANCELLED).
    ``drain_seconds`` defaults to 0 because nothing but the local client routes to these
    processes, so there is no load balancer to wait for on stop.
    """
    env = {"GRPCMESH_DRAIN_SECONDS": str(drain_seconds), "GRPCMESH_LOG_FORMAT": "text"}
    payments: dict[str, object] = {"failure_rate": decline_rate}
    if payments_seed is not None:
        payments["random_seed"] = payments_seed
    return [
        ServiceSpec.python_module("catalog", "grpcmesh_catalog", env=env),
        ServiceSpec.python_module(
            "inventory",
            "grpcmesh_inventory",
            config={"seed_stock": dict.fromkeys(PRODUCTS, stock_per_product)},
            env=env,
        ),
        ServiceSpec.python_module("payments", "grpcmesh_payments", config=payments, env=env),
        ServiceSpec.python_module("orders", "grpcmesh_orders", targets=DEPENDENCIES, env=env),
    ]
