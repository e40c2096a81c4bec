from __future__ import annotations

import math

import pytest

from grpcmesh_loadgen.stats import (
    CLIENT_ERROR,
    CallResult,
    LoadMode,
    LoadReport,
    percentile,
    summarize,
    summarize_latencies,
)

TERMINAL = {"CONFIRMED", "CANCELLED"}


def report(results: list[CallResult], *, planned: int | None = None) -> LoadReport:
    return summarize(
        results,
        target="t:1",
        mode=LoadMode.OPEN,
        planned=len(results) if planned is None else planned,
        target_rate=10.0,
        concurrency=4,
        elapsed_s=2.0,
        expected_outcomes=TERMINAL,
    )


class TestPercentile:
    def test_nearest_rank_on_1_to_100(self) -> None:
        values = [float(v) for v in range(1, 101)]
        assert percentile(values, 50) == 50.0
        assert percentile(values, 90) == 90.0
        assert percentile(values, 99) == 99.0
        assert percentile(values, 100) == 100.0

    def test_returns_an_observed_value_not_an_interpolation(self) -> None:
        values = [1.0, 2.0, 3.0, 4.0]
        assert percentile(values, 50) == 2.0
        assert percentile(values, 51) == 3.0
        assert percentile(values, 99) == 4.0

    def test_single_value_is_every_percentile(self) -> None:
        assert {percentile([7.0], q) for q in (0.1, 50, 99, 100)} == {7.0}

    @pytest.mark.parametrize("q", [0, -1, 100.1, math.nan])
    def test_rejects_out_of_range(self, q: float) -> None:
        with pytest.raises(ValueError, match="percentile"):
            percentile([1.0], q)

    def test_rejects_empty(self) -> None:
        with pytest.raises(ValueError, match="no values"):
            percentile([], 50)


def test_latency_summary_sorts_its_input() -> None:
    summary = summarize_latencies([0.3, 0.1, 0.2, 0.9])
    assert (summary.count, summary.p50, summary.p90, summary.p99, summary.max) == (
        4,
        0.2,
        0.9,
        0.9,
        0.9,
    )


def test_latency_summary_of_nothing_is_zero() -> None:
    summary = summarize_latencies([])
    assert (summary.count, summary.p50, summary.max) == (0, 0.0, 0.0)


def test_counts_statuses_and_outcomes_of_ok_calls_only() -> None:
    r = report(
        [
            CallResult(0.1, outcome="CONFIRMED"),
            CallResult(0.2, outcome="CONFIRMED"),
            CallResult(0.3, outcome="CANCELLED"),
            CallResult(0.4, status="UNAVAILABLE", outcome="CONFIRMED", detail="down"),
            CallResult(0.5, status="DEADLINE_EXCEEDED"),
        ]
    )
    assert r.statuses == {"DEADLINE_EXCEEDED": 1, "OK": 3, "UNAVAILABLE": 1}
    assert r.outcomes == {"CANCELLED": 1, "CONFIRMED": 2}
    assert (r.completed, r.ok, r.failed) == (5, 3, 2)
    # failed calls stay in the latency distribution: dropping them would flatter the tail
    assert r.latency.count == 5
    assert r.latency.max == 0.5
    assert r.achieved_rate == 2.5


def test_cancelled_orders_are_a_success() -> None:
    r = report([CallResult(0.1, outcome="CANCELLED"), CallResult(0.1, outcome="CONFIRMED")])
    assert r.succeeded


def test_any_failed_call_fails_the_run() -> None:
    r = report([CallResult(0.1, outcome="CONFIRMED"), CallResult(0.1, status="INTERNAL")])
    assert not r.succeeded


def test_client_errors_fail_the_run() -> None:
    assert not report([CallResult(0.1, status=CLIENT_ERROR, detail="bug")]).succeeded


def test_an_unexpected_outcome_fails_the_run() -> None:
    r = report([CallResult(0.1, outcome="PENDING"), CallResult(0.1, outcome="CONFIRMED")])
    assert r.unexpected_outcomes == 1
    assert not r.succeeded


def test_missing_calls_fail_the_run() -> None:
    assert not report([CallResult(0.1, outcome="CONFIRMED")], planned=2).succeeded


def test_error_samples_are_distinct_and_bounded() -> None:
    results = [CallResult(0.1, status="UNAVAILABLE", detail="down")] * 3 + [
        CallResult(0.1, status="INTERNAL", detail=f"boom {i}") for i in range(10)
    ]
    samples = report(results).error_samples
    assert samples[0] == "UNAVAILABLE: down"
    assert len(samples) == 5
    assert len(set(samples)) == 5


def test_zero_elapsed_has_zero_rate() -> None:
    r = summarize(
        [],
        target="t",
        mode=LoadMode.CLOSED,
        planned=0,
        target_rate=math.inf,
        concurrency=1,
        elapsed_s=0.0,
        expected_outcomes=TERMINAL,
    )
    assert r.achieved_rate == 0.0
    assert r.succeeded
