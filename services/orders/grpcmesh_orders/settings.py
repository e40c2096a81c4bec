"""Orders settings: kit settings plus the database, saga deadlines and compensation retries."""

from __future__ import annotations

from pydantic import Field

from grpcmesh_kit import KitSettings


class OrdersSettings(KitSettings):
    service_name: str = "orders"
    db_path: str = "orders.db"
    step_deadline_seconds: float = Field(default=5.0, gt=0)
    """Deadline of each call the saga makes to catalog, inventory or payments."""
    compensation_attempts: int = Field(default=6, ge=1)
    """Tries per compensation call (release, refund) before the order is left compensating
    for a later PlaceOrder retry or the next start to resume."""
    compensation_backoff_seconds: float = Field(default=0.05, gt=0)
    """First wait between compensation tries; doubles (with jitter) up to the maximum."""
    compensation_max_backoff_seconds: float = Field(default=2.0, gt=0)
    resume_concurrency: int = Field(default=16, ge=1)
    """How many interrupted sagas are resumed at once after a start."""
