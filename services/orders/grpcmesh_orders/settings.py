"""Orders settings: kit settings plus the database, saga deadlines and compensation retries."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from grpcmesh_kit import KitSettings


class OrdersSettings(KitSettings):
    service_name: str = "orders"
    db_path: str = "orders.db"
    step_deadline_seconds: float = Field(default=5.0, gt=0)
    """Deadline of each call the saga makes to catalog, inventory or payments."""
    unsent_step_attempts: int = Field(default=5, ge=1)
    """Tries of a forward step (price, reserve, charge, commit) whose call never left this side
    of the mesh (``clients.never_sent``: the caller's sidecar had no healthy upstream, say).
    The compensation backoff, doubling, comes between them (0.75 to 1 s in all by default).
    Such a call had no effect, so resending it is safe, and such gaps last moments: an
    endpoint the control plane is still pushing, a sidecar restarting. Only after the last
    try does the order fail that step."""
    compensation_attempts: int = Field(default=6, ge=1)
    """Tries per compensation call (refund, release, ...) in one go; if they all fail the
    order is left compensating and the recovery loop tries again once its lease expires."""
    compensation_backoff_seconds: float = Field(default=0.05, gt=0)
    """First wait between compensation tries; doubles (with jitter) up to the maximum."""
    compensation_max_backoff_seconds: float = Field(default=2.0, gt=0)
    resume_concurrency: int = Field(default=16, ge=1)
    """How many interrupted sagas are resumed at once (at start and by the recovery loop)."""
    saga_lease_seconds: float = Field(default=15.0, gt=0)
    """How long a replica's claim on a saga lasts without renewal (renewed before every call
    the saga makes). A saga whose replica died is resumed by another within about this long
    plus ``recovery_interval_seconds``; keep it well above ``step_deadline_seconds``."""
    recovery_interval_seconds: float = Field(default=2.0, gt=0)
    """How often each replica looks for PENDING orders whose lease expired."""
    watch_poll_seconds: float = Field(default=0.5, gt=0)
    """How often WatchOrder re-reads an order's log when nothing in its own process woke it:
    the saga may run in another replica or worker sharing the database."""

    @model_validator(mode="after")
    def _lease_outlives_a_step(self) -> Self:
        if self.saga_lease_seconds <= self.step_deadline_seconds:
            raise ValueError(
                f"saga_lease_seconds ({self.saga_lease_seconds}) must exceed "
                f"step_deadline_seconds ({self.step_deadline_seconds}): a lease that expires "
                "during a call lets a second replica drive the same saga"
            )
        return self
