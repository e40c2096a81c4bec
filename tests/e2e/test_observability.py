"""Observability live: ``grpcmesh up --prometheus`` runs a real Prometheus over the mesh with the
generated scrape config and rules; under demo load, the RED series exist with the scrape model's
labels, every dashboard panel and rule evaluates, the panels for traffic that flowed have data,
an injected payments failure shows on its error panel, and ``grpcmesh top`` shows live rates.

Loopback only; every wait is a bounded poll (first series ~6 s after Prometheus starts).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.observability import rule_expressions, rule_groups
from grpcmesh_control.observability.dashboards import (
    PanelQuery,
    all_queries,
    build_dashboards,
    for_prometheus,
)
from grpcmesh_loadgen import run_load
from tests.e2e.harness import Mesh, config_reloads, eventually, grpcmesh, reloaded
from tests.scrape import fetch

pytestmark = pytest.mark.slow

SERVICES = ("catalog", "inventory", "orders", "payments")
APP_LABELS = {"job", "instance", "service", "version", "replica"}
KIT_LABELS = {"grpc_service", "grpc_method", "grpc_type", "grpc_code"}
SERIES_TIMEOUT_S = 30.0
EVERY_ORDER_CALLS = frozenset({"PlaceOrder", "GetProduct", "ReserveStock", "Charge", "CommitStock"})
"""Methods every confirmed order calls: under the steady demo load their rate is never zero."""


class Load:
    """Demo orders through the ingress, a few per second, until stopped (a thread with its own
    event loop, so the tests' loops stay free for polling)."""

    def __init__(self, ingress: str, rate: float = 8.0) -> None:
        self._ingress, self._rate = ingress, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-load", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Short rounds, so stop() returns soon; failures are expected when injected.
            asyncio.run(run_load(self._ingress, int(self._rate * 2), self._rate))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A mesh with Prometheus, under demo load for the whole module."""
    mesh = Mesh(tmp_path_factory.mktemp("obs") / "run", prometheus=True)
    mesh.start()
    try:
        with Load(mesh.state.ingress):
            yield mesh
    finally:
        assert mesh.stop() == 143, mesh.log.read_text()[-3000:]


# --- Prometheus' HTTP API -----------------------------------------------------------------------


def _api(prometheus: str, path: str, **params: str) -> dict[str, Any]:
    url = f"http://{prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            doc: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 400/422 carry the parse or evaluation error
        doc = json.loads(exc.read())
    return doc


async def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    doc = await asyncio.to_thread(_api, prometheus, "query", query=expr)
    assert doc["status"] == "success", f"{expr}: {doc.get('errorType')}: {doc.get('error')}"
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def prometheus(mesh: Mesh) -> str:
    address = mesh.state.prometheus
    assert address is not None, "the mesh runs no Prometheus"
    return address


def carried_traffic(mesh: Mesh, side: str = "server") -> set[tuple[str, str, str, str]]:
    """(service, grpc_service, grpc_method, grpc_type) with handled calls, read from the apps'
    own /metrics (not from Prometheus, which is what is under test)."""
    from prometheus_client.parser import text_string_to_metric_families

    found = set()
    for r in mesh.state.replicas:
        for family in text_string_to_metric_families(fetch(r.metrics)):
            for s in family.samples:
                if s.name == f"grpc_{side}_handled_total" and s.value > 0:
                    labels = s.labels
                    found.add(
                        (
                            r.service,
                            labels["grpc_service"],
                            labels["grpc_method"],
                            labels["grpc_type"],
                        )
                    )
    return found


# --- the launcher runs Prometheus -----------------------------------------------------------


def test_status_and_state_show_prometheus_and_it_scrapes_every_target(observed: Mesh) -> None:
    address = prometheus(observed)
    assert observed.status()["prometheus"] == address
    assert observed.state.prometheus_pid is not None
    config = yaml.safe_load((observed.run_dir / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [str(observed.run_dir / "prometheus" / "grpcmesh.rules.yaml")]

    async def all_up() -> list[dict[str, Any]] | None:
        doc = await asyncio.to_thread(_api, address, "targets")
        targets = doc["data"]["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = asyncio.run(eventually(all_up, timeout=SERIES_TIMEOUT_S, what="every target up"))
    # Per replica an app and a sidecar, plus the ingress and the control plane.
    assert len(targets) == 2 * len(observed.state.replicas) + 2
    rules = _api(address, "rules")["data"]["groups"]
    assert {g["name"] for g in rules} == {g["name"] for g in rule_groups()}


# --- RED series ------------------------------------------------------------------------------


async def test_red_series_exist_for_every_method_that_carried_traffic(observed: Mesh) -> None:
    address = prometheus(observed)

    async def traffic() -> set[tuple[str, str, str, str]] | None:
        found = await asyncio.to_thread(carried_traffic, observed)
        return found if {s for s, *_ in found} >= set(SERVICES) else None

    flowed = await eventually(traffic, timeout=SERIES_TIMEOUT_S, what="traffic to every service")
    for service, grpc_service, method, grpc_type in sorted(flowed):
        where = (
            f'job="grpcmesh-app", service="{service}", grpc_service="{grpc_service}", '
            f'grpc_method="{method}"'
        )

        async def present(where: str = where) -> list[dict[str, Any]] | None:
            series = await query(address, f"grpc_server_handled_total{{{where}}}")
            return series or None

        series = await eventually(present, timeout=SERIES_TIMEOUT_S, what=f"series {where}")
        for s in series:
            assert set(s["metric"]) >= {"__name__", *APP_LABELS, *KIT_LABELS}, s["metric"]
            assert s["metric"]["grpc_type"] == grpc_type
        if grpc_type == "unary":
            buckets = await query(address, f"grpc_server_handling_seconds_bucket{{{where}}}")
            assert buckets and all("le" in b["metric"] for b in buckets), where
        if method not in EVERY_ORDER_CALLS:
            # Occasional calls (a compensation's ReleaseStock, say) may predate the first scrape:
            # Prometheus cannot see an increase it never sampled, so only the series is required.
            continue

        async def flowing(where: str = where) -> list[dict[str, Any]] | None:
            # A rate needs two samples that differ: poll, the first scrape may be the only one.
            rate = await query(address, f"rate(grpc_server_handled_total{{{where}}}[1m]) > 0")
            return rate or None

        await eventually(flowing, timeout=SERIES_TIMEOUT_S, what=f"a rate for {where}")


# --- every generated expression -------------------------------------------------------------

_MATCHER = re.compile(r'(grpc_service|grpc_method|grpc_type)="([^"]*)"')
_KIT = re.compile(r"\bgrpc_(server|client)_handl")


def _expects_data(panel: PanelQuery, flowed: dict[str, set[tuple[str, str, str, str]]]) -> bool:
    """A kit panel expects data when every call it selects carried traffic on its side; a
    panel selecting only non-OK codes (``grpc_code!="OK"``) may be empty without errors."""
    side = _KIT.search(panel.expr)
    if side is None or 'grpc_code!="OK"' in panel.expr:
        return False
    wanted = dict(_MATCHER.findall(panel.expr))
    return any(
        all(
            wanted.get(k, v) == v
            for k, v in (("grpc_service", svc), ("grpc_method", m), ("grpc_type", t))
        )
        for _, svc, m, t in flowed[side.group(1)]
    )


async def test_every_panel_and_rule_evaluates_and_panels_of_flowing_traffic_have_data(
    observed: Mesh,
) -> None:
    address = prometheus(observed)
    flowed = {
        side: await asyncio.to_thread(carried_traffic, observed, side)
        for side in ("server", "client")
    }
    panels = all_queries(build_dashboards(load_catalog()))
    expecting = [p for p in panels if _expects_data(p, flowed)]
    assert len(expecting) > 20, "expected the overview and per-method panels to have traffic"

    errors = []
    for panel in panels:
        doc = await asyncio.to_thread(_api, address, "query", query=for_prometheus(panel.expr))
        if doc["status"] != "success":
            errors.append(f"{panel.dashboard} / {panel.panel}: {doc.get('error')}")
    for rule in rule_expressions(rule_groups()):
        doc = await asyncio.to_thread(_api, address, "query", query=rule.expr)
        if doc["status"] != "success":
            errors.append(f"rule {rule.group} / {rule.rule}: {doc.get('error')}")
    assert errors == []

    for panel in expecting:

        async def has_data(panel: PanelQuery = panel) -> list[dict[str, Any]] | None:
            return await query(address, for_prometheus(panel.expr)) or None

        await eventually(
            has_data, timeout=SERIES_TIMEOUT_S, what=f"{panel.dashboard} / {panel.panel}"
        )


async def test_failures_injected_in_payments_show_on_its_error_panel(observed: Mesh) -> None:
    address = prometheus(observed)
    payments = next(
        b for b in build_dashboards(load_catalog()) if "PaymentService" in (b.title or "")
    )
    error_panel = next(
        p
        for p in all_queries([payments])
        if p.panel == "Server-fault ratio by version" and 'grpc_method="Charge"' in p.expr
    )
    keys = [f"payments/{r.replica}" for r in observed.payments_replicas()]
    paths = [Path(observed.replica(key).config_file) for key in keys]
    metrics = [observed.replica(key).metrics for key in keys]
    originals = [path.read_text() for path in paths]
    for key in keys:
        # UNAVAILABLE is a server fault (FAILED_PRECONDITION, the default, is a decline).
        observed.set_config(key, failure_rate=0.5, failure_code="UNAVAILABLE")
    try:

        async def faulting() -> float | None:
            result = await query(address, for_prometheus(error_panel.expr, rate_interval="30s"))
            worst = max((float(s["value"][1]) for s in result), default=0.0)
            return worst if worst > 0.05 else None

        ratio = await eventually(
            faulting, timeout=SERIES_TIMEOUT_S + 15, what="payments' fault ratio on the panel"
        )
        assert 0.05 < ratio <= 1.0
    finally:
        before = [await config_reloads(m) for m in metrics]
        for path, original in zip(paths, originals, strict=True):
            tmp = path.with_name(".config.yaml.tmp")
            tmp.write_text(original)
            tmp.replace(path)
        await reloaded(metrics, before, observed.workers)


# --- grpcmesh top ------------------------------------------------------------------------------


def _rates(output: str) -> dict[str, float]:
    rates = {}
    for line in output.splitlines():
        # Boxed on a terminal, whitespace-separated columns when piped (as here).
        cells = [c.strip() for c in re.split(r"[│|]|\s{2,}|\s", line) if c.strip()]
        if len(cells) >= 2 and cells[0] in SERVICES:
            rates[cells[0]] = float(cells[1])
    return rates


@pytest.mark.parametrize("source", ["prometheus", "apps"])
async def test_top_shows_every_service_with_a_live_rate(observed: Mesh, source: str) -> None:
    async def live() -> dict[str, float] | None:
        if source == "prometheus":
            result = await asyncio.to_thread(grpcmesh, "top", "--state-dir", str(observed.run_dir))
        else:  # the fallback, exercised on the same mesh through the library
            from grpcmesh_control.local.top import red_from_apps

            rows = await red_from_apps(observed.state.replicas, 2.0)
            return {r.service: r.rate for r in rows} if all(r.rate > 0 for r in rows) else None
        assert result.returncode == 0, result.stderr
        assert "from prometheus" in result.stdout, result.stdout
        rates = _rates(result.stdout)
        return rates if set(rates) == set(SERVICES) and all(rates.values()) else None

    rates = await eventually(live, timeout=SERIES_TIMEOUT_S, what=f"top ({source}) rates", every=1)
    assert set(rates) == set(SERVICES)
