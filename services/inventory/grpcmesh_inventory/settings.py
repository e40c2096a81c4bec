"""Inventory settings: kit settings plus the database path and the initial stock."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator

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

    @field_validator("seed_stock", mode="before")
    @classmethod
    def _json_text(cls, value: Any) -> Any:
        # A MeshService's spec.config holds strings, so the mounted file carries JSON text.
        return json.loads(value) if isinstance(value, str) else value
