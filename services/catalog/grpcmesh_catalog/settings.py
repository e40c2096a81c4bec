"""Catalog settings: kit settings plus the database path and the cache TTL."""

from __future__ import annotations

from pydantic import Field

from grpcmesh_kit import KitSettings


class CatalogSettings(KitSettings):
    service_name: str = "catalog"
    db_path: str = "catalog.db"
    # How long a product or a page stays cached; 0 disables the cache.
    cache_ttl_seconds: float = Field(default=30.0, ge=0)
    cache_max_entries: int = Field(default=4096, ge=1)
