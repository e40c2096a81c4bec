"""Pure summary of a load run: latency percentiles, counts by status and outcome, rates.

No I/O and no clock here: the engine records one ``CallResult`` per call and ``summarize`` turns
them into a ``LoadReport``, so every number in the printed table is unit-tested.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

OK = "OK"
"""Status name of a successful call (the gRPC code names are used for the others)."""

CLIENT_ERROR = "CLIENT_ERROR"
"""Status name of a call that failed in the client itself (a bug, not a server answer)."""

MAX_ERROR_SAMPLES = 5


class LoadMode(StrEnum):
    OPEN = "open"
    """Calls start at fixed intended times; latency is measured from the intended time."""
    CLOSED = "closed"
    """A fixed number of calls in flight; latency is measured from the actual send."""


@dataclass(frozen=True, slots=True)
class CallResult:
    """One completed call."""

    latency_s: float
    status: str = OK
    outcome: str = ""
    """The business outcome of a successful call (e.g. "CONFIRMED"); empty when it has none."""
    detail: str = ""
    """The error message of a failed call."""


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency in seconds. Empty runs have count 0 and every value 0.0."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below it.

    Nearest rank always returns an observed latency (no interpolation between two calls), which
    is what "p99 = X" should mean for a tail.
    """
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[rank - 1]


def summarize_latencies(latencies: Iterable[float]) -> LatencySummary:
    values = sorted(latencies)
    if not values:
        return LatencySummary(count=0, p50=0.0, p90=0.0, p99=0.0, max=0.0)
    return LatencySummary(
        count=len(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        max=values[-1],
    )


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a load run did. ``succeeded`` is the verdict the CLI turns into its exit code."""

    target: str
    mode: LoadMode
    planned: int
    target_rate: float
    """Calls per second asked for; ``math.inf`` in closed-loop mode."""
    concurrency: int
    elapsed_s: float
    """From the first call's (intended) start to the last call's completion."""
    statuses: Mapping[str, int]
    """Completed calls by status name ("OK", "UNAVAILABLE", ...)."""
    outcomes: Mapping[str, int]
    """Successful calls by business outcome ("CONFIRMED", "CANCELLED", ...)."""
    expected_outcomes: frozenset[str]
    """Outcomes that count as success; an OK call with any other outcome is unexpected."""
    latency: LatencySummary
    """Over every completed call, failed ones included: hiding failures would flatter the tail."""
    error_samples: tuple[str, ...] = field(default=())
    """A few distinct "STATUS: message" lines from failed calls, for diagnosis."""

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get(OK, 0)

    @property
    def failed(self) -> int:
        return self.completed - self.ok

    @property
    def unexpected_outcomes(self) -> int:
        return sum(n for o, n in self.outcomes.items() if o not in self.expected_outcomes)

    @property
    def achieved_rate(self) -> float:
        """Completed calls per second over the whole run."""
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def succeeded(self) -> bool:
        """Every planned call completed OK with an expected outcome."""
        return self.completed == self.planned and self.failed == 0 and not self.unexpected_outcomes


def summarize(
    results: Iterable[CallResult],
    *,
    target: str,
    mode: LoadMode,
    planned: int,
    target_rate: float,
    concurrency: int,
    elapsed_s: float,
    expected_outcomes: Iterable[str],
) -> LoadReport:
    results = list(results)
    statuses = Counter(r.status for r in results)
    outcomes = Counter(r.outcome for r in results if r.status == OK and r.outcome)
    samples: dict[str, None] = {}  # insertion-ordered set: first distinct errors win
    for r in results:
        if r.status != OK and len(samples) < MAX_ERROR_SAMPLES:
            samples.setdefault(f"{r.status}: {r.detail}" if r.detail else r.status)
    return LoadReport(
        target=target,
        mode=mode,
        planned=planned,
        target_rate=target_rate,
        concurrency=concurrency,
        elapsed_s=elapsed_s,
        statuses=dict(sorted(statuses.items())),
        outcomes=dict(sorted(outcomes.items())),
        expected_outcomes=frozenset(expected_outcomes),
        latency=summarize_latencies(r.latency_s for r in results),
        error_samples=tuple(samples),
    )
