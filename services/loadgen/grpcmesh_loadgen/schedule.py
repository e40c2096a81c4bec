"""When each call is meant to start. Pure: the engine adds the clock."""

from __future__ import annotations

import math

from grpcmesh_loadgen.stats import LoadMode


def load_mode(rate: float) -> LoadMode:
    """A finite rate is an open-loop schedule; ``math.inf`` asks for saturation (closed loop)."""
    if math.isnan(rate) or rate <= 0:
        raise ValueError(f"rate must be positive (or inf for closed loop), got {rate}")
    return LoadMode.CLOSED if math.isinf(rate) else LoadMode.OPEN


def intended_offset(index: int, rate: float) -> float:
    """Seconds after the run's start at which call ``index`` (0-based) is meant to start.

    The schedule depends on nothing but the index and the rate: a slow answer never pushes later
    calls back, so latency measured from these times includes any queueing the server caused
    (no coordinated omission).
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if load_mode(rate) is LoadMode.CLOSED:
        return 0.0
    return index / rate
