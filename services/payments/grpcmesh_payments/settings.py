"""Payments settings: kit settings plus failure injection for demos and tests.

The failure knobs are read from the app's *current* settings on every call, so editing the
mounted config file changes behaviour without a restart.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from grpcmesh_kit import KitSettings


class PaymentsSettings(KitSettings):
    service_name: str = "payments"
    db_path: str = "payments.db"
    # Share of new charges that fail, 0..1.
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # FAILED_PRECONDITION: a recorded decline (repeats return it). UNAVAILABLE: a transient
    # provider outage, nothing recorded, so a retry with the same key may succeed.
    failure_code: Literal["FAILED_PRECONDITION", "UNAVAILABLE"] = "FAILED_PRECONDITION"
    # Artificial delay before each Charge and Refund, to make latency visible in demos.
    latency_ms: int = Field(default=0, ge=0, le=60_000)
    # Seeds the failure-injection random source (read once at start); None: OS entropy.
    random_seed: int | None = None
