"""Rich rendering of a ``LoadReport`` (and a JSON form for scripts)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from grpcmesh_loadgen.stats import OK, LoadMode, LoadReport


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _schedule(report: LoadReport) -> str:
    if report.mode is LoadMode.OPEN:
        return f"open loop, {report.target_rate:g}/s, at most {report.concurrency} in flight"
    return f"closed loop, {report.concurrency} in flight"


def report_table(report: LoadReport) -> RenderableType:
    table = Table(title="PlaceOrder load", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("target", report.target)
    table.add_row("schedule", _schedule(report))
    table.add_row("calls planned", str(report.planned))
    table.add_row("calls completed", str(report.completed))
    table.add_section()
    table.add_row("calls ok", Text(str(report.ok), style="green"))
    for status, count in report.statuses.items():
        if status != OK:
            table.add_row(f"calls failed {status}", Text(str(count), style="red"))
    if not report.failed:
        table.add_row("calls failed", "0")
    table.add_section()
    for outcome, count in report.outcomes.items():
        style = "" if outcome in report.expected_outcomes else "red"
        table.add_row(f"orders {outcome}", Text(str(count), style=style))
    table.add_section()
    table.add_row("achieved rate", f"{report.achieved_rate:.1f}/s")
    table.add_row("elapsed", f"{report.elapsed_s:.2f} s")
    basis = "intended send" if report.mode is LoadMode.OPEN else "send"
    lat = report.latency
    table.add_row(f"latency p50 (from {basis})", _ms(lat.p50))
    table.add_row("latency p90", _ms(lat.p90))
    table.add_row("latency p99", _ms(lat.p99))
    table.add_row("latency max", _ms(lat.max))
    parts: list[RenderableType] = [table]
    if report.error_samples:
        parts.append(Text("first errors:", style="bold red"))
        parts.extend(Text(f"  {line}") for line in report.error_samples)
    verdict = "PASS" if report.succeeded else "FAIL"
    parts.append(Text(f"result: {verdict}", style="bold green" if report.succeeded else "bold red"))
    return Group(*parts)


def report_json(report: LoadReport) -> dict[str, Any]:
    """The report as plain JSON types (``target_rate`` is null in closed-loop mode)."""
    return {
        "target": report.target,
        "mode": report.mode.value,
        "planned": report.planned,
        "target_rate": None if math.isinf(report.target_rate) else report.target_rate,
        "concurrency": report.concurrency,
        "completed": report.completed,
        "ok": report.ok,
        "failed": report.failed,
        "statuses": dict(report.statuses),
        "outcomes": dict(report.outcomes),
        "achieved_rate": report.achieved_rate,
        "elapsed_s": report.elapsed_s,
        "latency_s": {
            "p50": report.latency.p50,
            "p90": report.latency.p90,
            "p99": report.latency.p99,
            "max": report.latency.max,
        },
        "error_samples": list(report.error_samples),
        "succeeded": report.succeeded,
    }
