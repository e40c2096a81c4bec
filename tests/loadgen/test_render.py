from __future__ import annotations

import io
import json
import math

from rich.console import Console

from grpcmesh_loadgen.render import report_json, report_table
from grpcmesh_loadgen.stats import CallResult, LoadMode, LoadReport, summarize


def make_report(results: list[CallResult], mode: LoadMode = LoadMode.OPEN) -> LoadReport:
    return summarize(
        results,
        target="127.0.0.1:9",
        mode=mode,
        planned=len(results),
        target_rate=50.0 if mode is LoadMode.OPEN else math.inf,
        concurrency=8,
        elapsed_s=1.0,
        expected_outcomes={"CONFIRMED", "CANCELLED"},
    )


def text(report: LoadReport) -> str:
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(report_table(report))
    return out.getvalue()


def test_table_shows_counts_rates_and_latency() -> None:
    shown = text(
        make_report(
            [
                CallResult(0.010, outcome="CONFIRMED"),
                CallResult(0.020, outcome="CANCELLED"),
                CallResult(0.030, status="UNAVAILABLE", detail="no backend"),
            ]
        )
    )
    for expected in (
        "127.0.0.1:9",
        "open loop, 50/s, at most 8 in flight",
        "calls ok",
        "calls failed UNAVAILABLE",
        "orders CONFIRMED",
        "orders CANCELLED",
        "achieved rate",
        "3.0/s",
        "latency p50 (from intended send)",
        "20.0 ms",
        "latency max",
        "30.0 ms",
        "UNAVAILABLE: no backend",
        "result: FAIL",
    ):
        assert expected in shown, expected


def test_clean_run_passes_and_says_zero_failed() -> None:
    shown = text(make_report([CallResult(0.01, outcome="CONFIRMED")], LoadMode.CLOSED))
    assert "closed loop, 8 in flight" in shown
    assert "calls failed" in shown
    assert "result: PASS" in shown
    assert "first errors" not in shown


def test_json_is_plain_and_complete() -> None:
    report = make_report([CallResult(0.01, outcome="CONFIRMED")], LoadMode.CLOSED)
    data = json.loads(json.dumps(report_json(report)))
    assert data["target_rate"] is None
    assert data["outcomes"] == {"CONFIRMED": 1}
    assert data["latency_s"]["p99"] == 0.01
    assert data["succeeded"] is True
