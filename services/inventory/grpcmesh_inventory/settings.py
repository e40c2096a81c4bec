"""Inventory settings: kit settings plus the database path and the initial stock."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from grpcmesh_kit import KitSettings


class InventorySettings(KitSettings):
    service_name: str = "inventory"
    db_path: str = "inventory.db"
    # Initial available stock per product id, applied at start only to products without a
    # stock row, so restarts and extra replicas never reset stock that has moved since.
    # Env: GRPCMESH_SEED_STOCK='{"sku-0001": 100}'.
    seed_stock: dict[Annotated[str, Field(min_length=1)], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict
    )
