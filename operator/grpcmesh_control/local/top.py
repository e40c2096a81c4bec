"""``grpcmesh top``: live RED numbers per service (requests/s, server-fault %, p50/p99).

Two sources, the same numbers: the local Prometheus (``up --prometheus``), queried with the
overview dashboard's own expressions (``dashboards.red_expressions``); otherwise the apps'
``/metrics`` scraped twice, the counters diffed over the interval (``red_from_scrapes``, pure).
Both count what each service's kit measured on the server side.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from grpcmesh_control.local.state import ReplicaState, RunState
from grpcmesh_control.mesh.errors import MeshError
from grpcmesh_control.observability.scrape import Label
from grpcmesh_control.observability.signals import SERVER_FAULT_CODES, KitMetric, Side

__all__ = [
    "ServiceRed",
    "TopError",
    "red_from_apps",
    "red_from_prometheus",
    "red_from_scrapes",
    "red_from_state",
]

PROMETHEUS_WINDOW = "15s"
"""Prometheus' rate window: ~15 scrapes at local mode's 1 s, recent yet not jumpy."""

_HANDLED = KitMetric.HANDLED.of(Side.SERVER)
_BUCKET = KitMetric.HANDLING_SECONDS_BUCKET.of(Side.SERVER)
# go-grpc-prometheus spells codes the Go way, the kit the Python way; both are faults.
_FAULTS = frozenset(
    {
        *SERVER_FAULT_CODES,
        *("".join(p.capitalize() for p in c.split("_")) for c in SERVER_FAULT_CODES),
    }
)


class TopError(MeshError, RuntimeError):
    """No numbers could be read (Prometheus or every app unreachable)."""


@dataclass(frozen=True)
class ServiceRed:
    service: str
    rate: float
    """Requests handled per second."""
    error_ratio: float | None
    """Share answered with a server fault; None without requests."""
    p50: float | None
    """Seconds; None without (unary) requests."""
    p99: float | None


# --- from two scrapes (pure) --------------------------------------------------------------------


@dataclass
class _Counts:
    handled: float = 0.0
    faults: float = 0.0
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    """Cumulative unary handling-time buckets by upper bound."""


def _counts(text: str) -> _Counts:
    counts = _Counts()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == _HANDLED:
                counts.handled += sample.value
                if sample.labels.get("grpc_code") in _FAULTS:
                    counts.faults += sample.value
            elif sample.name == _BUCKET and sample.labels.get("grpc_type") == "unary":
                counts.buckets[float(sample.labels["le"])] += sample.value
    return counts


def _quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative bucket counts (linear within the
    bucket; the +Inf bucket answers the highest finite bound)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def red_from_scrapes(
    before: Mapping[str, str],
    after: Mapping[str, str],
    seconds: float,
    services: Mapping[str, str],
) -> list[ServiceRed]:
    """RED per service from two scrapes ``seconds`` apart; ``before``/``after`` map a metrics
    address to its page, ``services`` a metrics address to its service. A replica missing from
    either scrape is left out; counters that went down (a restart) count from zero."""
    totals: dict[str, _Counts] = {name: _Counts() for name in set(services.values())}
    for address, service in services.items():
        if address not in before or address not in after:
            continue
        old, new = _counts(before[address]), _counts(after[address])
        total = totals[service]
        total.handled += _delta(new.handled, old.handled)
        total.faults += _delta(new.faults, old.faults)
        for le, count in new.buckets.items():
            total.buckets[le] += _delta(count, old.buckets.get(le, 0.0))
    return [
        ServiceRed(
            service=name,
            rate=c.handled / seconds if seconds > 0 else 0.0,
            error_ratio=c.faults / c.handled if c.handled > 0 else None,
            p50=_quantile(0.5, c.buckets),
            p99=_quantile(0.99, c.buckets),
        )
        for name, c in sorted(totals.items())
    ]


def _delta(new: float, old: float) -> float:
    return new - old if new >= old else new


# --- the edges ----------------------------------------------------------------------------------


async def _fetch(session: aiohttp.ClientSession, address: str) -> str | None:
    try:
        async with session.get(f"http://{address}/metrics") as response:
            return await response.text() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _scrape_all(
    session: aiohttp.ClientSession, replicas: Sequence[ReplicaState]
) -> dict[str, str]:
    pages = await asyncio.gather(*(_fetch(session, r.metrics) for r in replicas))
    return {r.metrics: page for r, page in zip(replicas, pages, strict=True) if page is not None}


async def red_from_apps(replicas: Sequence[ReplicaState], interval_s: float) -> list[ServiceRed]:
    """Scrape every app's /metrics, wait ``interval_s``, scrape again, diff."""
    timeout = aiohttp.ClientTimeout(total=3.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.monotonic()
        before = await _scrape_all(session, replicas)
        if not before:
            raise TopError("no app answered on /metrics")
        await asyncio.sleep(interval_s)
        after = await _scrape_all(session, replicas)
        elapsed = time.monotonic() - started
    return red_from_scrapes(before, after, elapsed, {r.metrics: r.service for r in replicas})


async def _query(session: aiohttp.ClientSession, prometheus: str, expr: str) -> dict[str, float]:
    """An instant query's value per ``service`` label (NaN, from 0/0, is left out)."""
    url = f"http://{prometheus}/api/v1/query"
    try:
        async with session.get(url, params={"query": expr}) as response:
            doc: dict[str, Any] = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise TopError(f"Prometheus at {prometheus}: {exc}") from None
    if doc.get("status") != "success":
        raise TopError(f"Prometheus at {prometheus}: {doc.get('error', doc)}")
    out = {}
    for series in doc["data"]["result"]:
        value = float(series["value"][1])
        if not math.isnan(value):
            out[series["metric"].get(Label.SERVICE.value, "")] = value
    return out


async def red_from_prometheus(prometheus: str, services: Iterable[str]) -> list[ServiceRed]:
    """The overview dashboard's RED expressions per service, over ``PROMETHEUS_WINDOW``."""
    # Imported here: the dashboards need the Grafana SDK (the `local` extra), and the CLI
    # module that imports this one also runs `grpcmesh operator`, whose image has no SDK.
    from grpcmesh_control.observability.dashboards import for_prometheus, red_expressions

    timeout = aiohttp.ClientTimeout(total=5.0)
    expressions = red_expressions()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        values = {
            name: await _query(
                session, prometheus, for_prometheus(expr, rate_interval=PROMETHEUS_WINDOW)
            )
            for name, expr in expressions.items()
        }
    return [
        ServiceRed(
            service=name,
            rate=values["rate"].get(name, 0.0),
            error_ratio=values["errors"].get(name),
            p50=values["p50"].get(name),
            p99=values["p99"].get(name),
        )
        for name in sorted(set(services) | set(values["rate"]))
    ]


async def red_from_state(state: RunState, interval_s: float = 2.0) -> tuple[str, list[ServiceRed]]:
    """(source, numbers): the mesh's Prometheus when it runs one, else two scrapes of the apps."""
    if state.prometheus is not None:
        return f"prometheus {state.prometheus}", await red_from_prometheus(
            state.prometheus, state.services
        )
    return f"apps' /metrics over {interval_s:g}s", await red_from_apps(state.replicas, interval_s)
