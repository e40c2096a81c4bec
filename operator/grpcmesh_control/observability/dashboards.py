"""Grafana dashboards, built with grafana-foundation-sdk (never hand-written JSON).

- ``grpcmesh-overview``: RED per service, server side (what each service answered) and client
  side (what each service called), from the kit's go-grpc-prometheus metrics;
- one dashboard per gRPC service of the method catalog: a summary row, then a row per method
  (the catalog's methods, so a new RPC in the protos gets its row on the next generation);
- ``grpcmesh-control-plane``: xDS pushes, ACKs/NACKs, convergence, connected proxies, rebuilds;
- ``grpcmesh-envoy``: upstream health as the sidecars see it (requests, 5xx, latency, timeouts,
  retries, circuit-breaker overflows, healthy endpoints, outlier ejections).

Every panel reads the data source picked in the ``datasource`` variable and rates over
``$__rate_interval``; ``all_queries`` lists every panel's PromQL and ``for_prometheus`` turns one
into what Grafana would send, so tests can evaluate each against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import prometheus as prometheus_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_m

from grpcmesh_control.mesh.model.catalog import MethodCatalog, MethodInfo, ServiceInfo
from grpcmesh_control.observability import _promql as q
from grpcmesh_control.observability.scrape import Job, Label
from grpcmesh_control.observability.signals import (
    ENVOY_INTERNAL_CLUSTERS,
    HANDSHAKE_FAILURES,
    ControlPlaneMetric,
    EnvoyMetric,
    KitMetric,
    Side,
    app,
    control_plane,
    denied_calls,
    envoy,
    server_fault,
)

__all__ = [
    "DASHBOARD_TAG",
    "RATE_INTERVAL",
    "SIDECAR_LABEL",
    "PanelQuery",
    "all_queries",
    "build_dashboards",
    "control_plane_dashboard",
    "dashboard_configmaps",
    "dashboard_json",
    "envoy_dashboard",
    "for_prometheus",
    "overview_dashboard",
    "red_expressions",
    "service_dashboard",
    "write_dashboards",
]

DASHBOARD_TAG = "grpcmesh"
RATE_INTERVAL = "$__rate_interval"
"""Grafana's window for rate(): at least four scrape intervals, so a panel never shows gaps."""
SIDECAR_LABEL = ("grafana_dashboard", "1")
"""The label the Grafana chart's dashboard sidecar watches ConfigMaps for (its default)."""

_DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
_UID_MAX = 40  # Grafana's limit


class _Unit(StrEnum):
    REQUESTS = "reqps"
    OPS = "ops"
    RATIO = "percentunit"
    SECONDS = "s"
    MILLISECONDS = "ms"
    COUNT = "short"


class PanelQuery(NamedTuple):
    """One PromQL target of one panel (``dashboard`` and ``panel`` are titles)."""

    dashboard: str
    panel: str
    expr: str


@dataclass(frozen=True)
class _Target:
    expr: str
    legend: str


# --- PromQL for the kit's metrics ---------------------------------------------------------------


def _requests(side: Side, group: Sequence[str], *matchers: q.Matcher) -> str:
    return q.by("sum", group, q.rate(app(KitMetric.HANDLED.of(side), *matchers), RATE_INTERVAL))


def _fault_ratio(side: Side, group: Sequence[str], *matchers: q.Matcher) -> str:
    faults = _requests(side, group, *matchers, server_fault())
    total = _requests(side, group, *matchers)
    # "or total * 0": no fault series at all means 0%, not "no data".
    return f"({faults} or {total} * 0) / {total}"


def _latency(side: Side, quantile: float, group: Sequence[str], *matchers: q.Matcher) -> str:
    buckets = app(KitMetric.HANDLING_SECONDS_BUCKET.of(side), *matchers)
    return q.histogram_quantile(quantile, buckets, RATE_INTERVAL, group)


_UNARY = q.eq("grpc_type", "unary")
_QUANTILES = (0.5, 0.9, 0.99)


def red_expressions(
    side: Side = Side.SERVER, group: Sequence[str] = (Label.SERVICE.value,)
) -> dict[str, str]:
    """The overview's RED expressions grouped by ``group``: ``rate`` (requests/s), ``errors``
    (server-fault ratio), ``p50`` and ``p99`` (seconds, unary). They keep Grafana's rate
    variable: expand it with ``for_prometheus`` (``grpcmesh top`` queries them live)."""
    return {
        "rate": _requests(side, group),
        "errors": _fault_ratio(side, group),
        "p50": _latency(side, 0.5, group, _UNARY),
        "p99": _latency(side, 0.99, group, _UNARY),
    }


# --- panel builders -----------------------------------------------------------------------------


def _timeseries(
    title: str,
    description: str,
    unit: _Unit,
    *targets: _Target,
    width: int = 8,
    height: int = 8,
) -> timeseries_b.Panel:
    panel = (
        timeseries_b.Panel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit.value)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if unit is _Unit.RATIO:
        panel = panel.min(0)
    for index, target in enumerate(targets):
        panel = panel.with_target(
            prometheus_b.Dataquery()
            .expr(target.expr)
            .legend_format(target.legend)
            .ref_id(chr(ord("A") + index))
            .range()
        )
    return panel


def _stat(title: str, description: str, unit: _Unit, expr: str, width: int = 4) -> stat_b.Panel:
    return (
        stat_b.Panel()
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit.value)
        .span(width)
        .height(4)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(prometheus_b.Dataquery().expr(expr).ref_id("A").range())
    )


def _board(uid: str, title: str, description: str) -> dashboard_b.Dashboard:
    return (
        dashboard_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([DASHBOARD_TAG])
        .editable()
        .refresh("10s")
        .time("now-30m", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard_b.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .link(
            dashboard_b.DashboardLink("grpcmesh dashboards")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags([DASHBOARD_TAG])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


def _row(title: str) -> dashboard_b.Row:
    # Expanded: the panels added after it with with_panel() belong to it.
    return dashboard_b.Row(title).collapsed(False)


def _uid(prefix: str, name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{prefix}{slug}"[:_UID_MAX].rstrip("-")


def _finish(board: dashboard_b.Dashboard) -> model.Dashboard:
    """Build, and number panels 1.. in order (Grafana links and "view panel" use the ids)."""
    built = board.build()
    for number, panel in enumerate(_panels(built), start=1):
        panel.id_val = number
    return built


def _panels(board: model.Dashboard) -> Iterator[model.Panel | model.RowPanel]:
    for panel in board.panels or ():
        yield panel
        if isinstance(panel, model.RowPanel):
            yield from panel.panels


# --- (a) mesh overview --------------------------------------------------------------------------


def overview_dashboard() -> model.Dashboard:
    service = (Label.SERVICE.value,)
    caller_callee = (Label.SERVICE.value, "grpc_service")
    server, client = Side.SERVER, Side.CLIENT
    board = _board(
        "grpcmesh-overview",
        "grpcmesh / Mesh overview",
        "Rate, errors and duration per MeshService, as each service's kit measured them.",
    )
    board = (
        board.with_row(_row("Mesh"))
        .with_panel(
            _stat(
                "Requests/s",
                "Requests all services handled.",
                _Unit.REQUESTS,
                _requests(server, ()),
            )
        )
        .with_panel(
            _stat(
                "Server-fault ratio",
                "Share of requests answered with a server fault.",
                _Unit.RATIO,
                _fault_ratio(server, ()),
            )
        )
        .with_panel(
            _stat(
                "p99 latency (unary)",
                "99th percentile of unary handling time, whole mesh.",
                _Unit.SECONDS,
                _latency(server, 0.99, (), _UNARY),
            )
        )
        .with_panel(
            _stat(
                "App replicas up",
                "Service-kit /metrics endpoints answering scrapes.",
                _Unit.COUNT,
                f"sum({q.selector('up', q.eq('job', Job.APP))})",
            )
        )
        .with_panel(
            _stat(
                "Envoys up",
                "Sidecar and ingress Envoys answering scrapes.",
                _Unit.COUNT,
                f"sum({q.selector('up', q.eq('job', Job.ENVOY))})",
            )
        )
        .with_panel(
            _stat(
                "xDS-connected proxies",
                "Envoys with an open ADS stream to the control plane.",
                _Unit.COUNT,
                f"sum({control_plane(ControlPlaneMetric.CONNECTED_PROXIES)})",
            )
        )
    )
    board = (
        board.with_row(_row("Server side: what each service answered"))
        .with_panel(
            _timeseries(
                "Requests/s by service",
                "Completed RPCs, any status.",
                _Unit.REQUESTS,
                _Target(_requests(server, service), "{{service}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Server-fault ratio by service",
                "Share of RPCs answered with a code that spends the error budget.",
                _Unit.RATIO,
                _Target(_fault_ratio(server, service), "{{service}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Non-OK responses/s by service and code",
                "Every code but OK, including the caller's mistakes (NOT_FOUND, ...).",
                _Unit.REQUESTS,
                _Target(
                    _requests(server, (*service, "grpc_code"), q.ne("grpc_code", "OK")),
                    "{{service}} {{grpc_code}}",
                ),
            )
        )
    )
    for quantile in _QUANTILES:
        board = board.with_panel(
            _timeseries(
                f"p{quantile * 100:g} latency by service (unary)",
                "Server handling time of unary RPCs (a stream's time is its lifetime).",
                _Unit.SECONDS,
                _Target(_latency(server, quantile, service, _UNARY), "{{service}}"),
            )
        )
    board = (
        board.with_row(_row("Client side: calls each service made (caller → callee)"))
        .with_panel(
            _timeseries(
                "Calls/s by caller → callee",
                "Completed outgoing RPCs, any status.",
                _Unit.REQUESTS,
                _Target(_requests(client, caller_callee), "{{service}} → {{grpc_service}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Server-fault ratio by caller → callee",
                "Share of calls that ended in a server fault, as the caller saw it "
                "(includes the sidecars' UNAVAILABLE and DEADLINE_EXCEEDED).",
                _Unit.RATIO,
                _Target(_fault_ratio(client, caller_callee), "{{service}} → {{grpc_service}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Non-OK calls/s by caller → callee and code",
                "Every code but OK.",
                _Unit.REQUESTS,
                _Target(
                    _requests(client, (*caller_callee, "grpc_code"), q.ne("grpc_code", "OK")),
                    "{{service}} → {{grpc_service}} {{grpc_code}}",
                ),
            )
        )
    )
    for quantile in _QUANTILES:
        board = board.with_panel(
            _timeseries(
                f"p{quantile * 100:g} call latency by caller → callee (unary)",
                "Client-side time of unary calls: the callee's time plus both sidecars and the "
                "network.",
                _Unit.SECONDS,
                _Target(
                    _latency(client, quantile, caller_callee, _UNARY),
                    "{{service}} → {{grpc_service}}",
                ),
            )
        )
    return _finish(board)


# --- (b) one dashboard per gRPC service ---------------------------------------------------------


def _method_kind(method: MethodInfo) -> str:
    if method.client_streaming and method.server_streaming:
        return "bidi stream"
    if method.client_streaming:
        return "client stream"
    if method.server_streaming:
        return "server stream"
    return "unary"


def _method_row(service: ServiceInfo, method: MethodInfo) -> dashboard_b.Row:
    rpc = (q.eq("grpc_service", service.name), q.eq("grpc_method", method.name))
    version = (Label.VERSION.value,)
    server = Side.SERVER
    retry = "retry-safe" if method.idempotency.safe_to_retry else "not retry-safe"
    duration = "Stream duration" if method.streaming else "Latency"
    row = (
        dashboard_b.Row(f"{method.name} · {_method_kind(method)} · {retry}")
        .collapsed(True)  # loaded when opened: a big service would otherwise run every query
        .with_panel(
            _timeseries(
                "Calls/s by caller",
                "Completed calls, by the calling MeshService.",
                _Unit.REQUESTS,
                _Target(_requests(Side.CLIENT, (Label.SERVICE.value,), *rpc), "{{service}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Requests/s by version",
                "Completed RPCs per MeshService version.",
                _Unit.REQUESTS,
                _Target(_requests(server, version, *rpc), "{{version}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Responses/s by code",
                "Every status code, OK included.",
                _Unit.REQUESTS,
                _Target(_requests(server, ("grpc_code",), *rpc), "{{grpc_code}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Server-fault ratio by version",
                "Share of RPCs answered with a server fault.",
                _Unit.RATIO,
                _Target(_fault_ratio(server, version, *rpc), "{{version}}"),
            )
        )
        .with_panel(
            _timeseries(
                f"{duration} p50 / p90 / p99",
                "Server handling time, all versions.",
                _Unit.SECONDS,
                *(
                    _Target(_latency(server, quantile, (), *rpc), f"p{quantile * 100:g}")
                    for quantile in _QUANTILES
                ),
            )
        )
    )
    if method.streaming:
        messages = [
            _Target(
                q.by("sum", (), q.rate(app(metric.of(server), *rpc), RATE_INTERVAL)),
                legend,
            )
            for metric, legend in (
                (KitMetric.MSG_RECEIVED, "received"),
                (KitMetric.MSG_SENT, "sent"),
            )
        ]
        row = row.with_panel(
            _timeseries(
                "Stream messages/s", "Messages the server received and sent.", _Unit.OPS, *messages
            )
        )
    return row


def service_dashboard(service: ServiceInfo) -> model.Dashboard:
    """A gRPC service's dashboard: all methods side by side, then a (collapsed) row per method."""
    package, _, short = service.name.rpartition(".")
    this = q.eq("grpc_service", service.name)
    method, version = ("grpc_method",), (Label.VERSION.value,)
    server = Side.SERVER
    board = (
        _board(
            _uid("grpcmesh-api-", short),
            f"grpcmesh / {short}" + (f" ({package})" if package else ""),
            f"The gRPC service {service.name}: every method, then a row per method.",
        )
        .with_row(_row("All methods"))
        .with_panel(
            _timeseries(
                "Requests/s by method",
                "Completed RPCs, any status.",
                _Unit.REQUESTS,
                _Target(_requests(server, method, this), "{{grpc_method}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Server-fault ratio by method",
                "Share of RPCs answered with a server fault.",
                _Unit.RATIO,
                _Target(_fault_ratio(server, method, this), "{{grpc_method}}"),
            )
        )
        .with_panel(
            _timeseries(
                "p99 latency by method (unary)",
                "Server handling time.",
                _Unit.SECONDS,
                _Target(_latency(server, 0.99, method, this, _UNARY), "{{grpc_method}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Requests/s by version",
                "Compare a canary with the stable version.",
                _Unit.REQUESTS,
                _Target(_requests(server, version, this), "{{version}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Server-fault ratio by version",
                "Compare a canary with the stable version.",
                _Unit.RATIO,
                _Target(_fault_ratio(server, version, this), "{{version}}"),
            )
        )
        .with_panel(
            _timeseries(
                "p99 latency by version (unary)",
                "Compare a canary with the stable version.",
                _Unit.SECONDS,
                _Target(_latency(server, 0.99, version, this, _UNARY), "{{version}}"),
            )
        )
    )
    for info in service.methods:
        board = board.with_row(_method_row(service, info))
    return _finish(board)


# --- (c) control plane --------------------------------------------------------------------------


def control_plane_dashboard() -> model.Dashboard:
    by_type = ("type",)

    def per_type(metric: ControlPlaneMetric) -> str:
        return q.by("sum", by_type, q.rate(control_plane(metric), RATE_INTERVAL))

    connected = f"sum({control_plane(ControlPlaneMetric.CONNECTED_PROXIES)})"
    envoys_up = f"count({q.selector('up', q.eq('job', Job.ENVOY))} == 1)"
    nacks_1h = q.by("sum", (), q.increase(control_plane(ControlPlaneMetric.NACKS), "1h"))
    rebuild_buckets = control_plane(ControlPlaneMetric.REBUILD_SECONDS_BUCKET)
    cert_expiry = control_plane(ControlPlaneMetric.WORKLOAD_CERT_EXPIRY)
    cert_issued = control_plane(ControlPlaneMetric.WORKLOAD_CERT_ISSUED)
    board = (
        _board(
            "grpcmesh-control-plane",
            "grpcmesh / Control plane",
            "The xDS control plane: what it pushes, what Envoys accept, how fast it rebuilds.",
        )
        .with_row(_row("Now"))
        .with_panel(
            _stat(
                "Connected proxies",
                "Envoys with an open ADS stream.",
                _Unit.COUNT,
                connected,
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Envoys up",
                "Envoys Prometheus scrapes: each should be connected.",
                _Unit.COUNT,
                envoys_up,
                width=6,
            )
        )
        .with_panel(
            _stat(
                "NACKs in the last hour",
                "Responses Envoys rejected; GET /status names node and error.",
                _Unit.COUNT,
                nacks_1h,
                width=6,
            )
        )
        .with_panel(
            _stat(
                "Invalid resource files",
                "Files ignored (last valid content in use).",
                _Unit.COUNT,
                f"max({control_plane(ControlPlaneMetric.SOURCE_PROBLEMS)})",
                width=6,
            )
        )
        .with_row(_row("xDS"))
        .with_panel(
            _timeseries(
                "Pushes/s by type",
                "xDS responses sent to Envoys.",
                _Unit.OPS,
                _Target(per_type(ControlPlaneMetric.PUSHES), "{{type}}"),
            )
        )
        .with_panel(
            _timeseries(
                "ACKs and NACKs/s by type",
                "Envoys' answers to the pushes.",
                _Unit.OPS,
                _Target(per_type(ControlPlaneMetric.ACKS), "ACK {{type}}"),
                _Target(per_type(ControlPlaneMetric.NACKS), "NACK {{type}}"),
            )
        )
        .with_panel(
            _timeseries(
                "Convergence: ACKs per push by type",
                "ACKs / pushes over the window: 100% once every push is accepted; below "
                "while Envoys lag or reject.",
                _Unit.RATIO,
                _Target(
                    f"{per_type(ControlPlaneMetric.ACKS)} / {per_type(ControlPlaneMetric.PUSHES)}",
                    "{{type}}",
                ),
            )
        )
        .with_panel(
            _timeseries(
                "Connected proxies vs Envoys up",
                "Equal when every Envoy has a stream.",
                _Unit.COUNT,
                _Target(connected, "connected (control plane)"),
                _Target(envoys_up, "Envoys up"),
            )
        )
        .with_panel(
            _timeseries(
                "xDS stream per proxy (Envoy's view)",
                "1 connected, 0 not.",
                _Unit.COUNT,
                _Target(
                    q.by(
                        "min",
                        (Label.PROXY, Label.SERVICE, Label.REPLICA),
                        envoy(EnvoyMetric.CONTROL_PLANE_CONNECTED),
                    ),
                    "{{proxy}} {{service}}/{{replica}}",
                ),
                width=16,
            )
        )
        .with_row(_row("Snapshots"))
        .with_panel(
            _timeseries(
                "Rebuilds/s and failures/s",
                "A failed rebuild publishes nothing; the last good snapshot stays.",
                _Unit.OPS,
                _Target(
                    q.by(
                        "sum", (), q.rate(control_plane(ControlPlaneMetric.REBUILDS), RATE_INTERVAL)
                    ),
                    "rebuilds",
                ),
                _Target(
                    q.by(
                        "sum",
                        (),
                        q.rate(control_plane(ControlPlaneMetric.REBUILD_ERRORS), RATE_INTERVAL),
                    ),
                    "failures",
                ),
            )
        )
        .with_panel(
            _timeseries(
                "Rebuild duration p50 / p99",
                "Time to build every node's snapshot.",
                _Unit.SECONDS,
                *(
                    _Target(
                        q.histogram_quantile(quantile, rebuild_buckets, RATE_INTERVAL, ()),
                        f"p{quantile * 100:g}",
                    )
                    for quantile in (0.5, 0.99)
                ),
            )
        )
        .with_row(_row("Identity"))
        .with_panel(
            _stat(
                "Mesh roots expire in",
                "Earliest expiry of the mesh roots and the CA's signing chain; rotate before "
                "(docs/security.md). No data: no mesh CA (plaintext).",
                _Unit.SECONDS,
                f"min({control_plane(ControlPlaneMetric.ROOTS_EXPIRY)}) - time()",
                width=6,
            )
        )
        .with_panel(
            _timeseries(
                "Workload certificate life left",
                "Share of its lifetime each identity's shortest-lived certificate has left: "
                "renewal at half life keeps it above 50%; below 25% alerts.",
                _Unit.RATIO,
                _Target(
                    q.by(
                        "min",
                        ("identity",),
                        f"({cert_expiry} - time()) / ({cert_expiry} - {cert_issued})",
                    ),
                    "{{identity}}",
                ),
                width=9,
            )
        )
        .with_panel(
            _timeseries(
                "Workload certificate expires in",
                "Time to the earliest expiry among each identity's connected nodes.",
                _Unit.SECONDS,
                _Target(q.by("min", ("identity",), f"{cert_expiry} - time()"), "{{identity}}"),
                width=9,
            )
        )
    )
    return _finish(board)


# --- (d) Envoy upstream health ------------------------------------------------------------------


def envoy_dashboard() -> model.Dashboard:
    upstream = (Label.SERVICE.value, "envoy_cluster_name")
    legend = "{{service}} → {{envoy_cluster_name}}"
    mesh_clusters = q.not_regex("envoy_cluster_name", "|".join(ENVOY_INTERNAL_CLUSTERS))

    def rate_of(metric: EnvoyMetric, *matchers: q.Matcher) -> str:
        return q.by("sum", upstream, q.rate(envoy(metric, mesh_clusters, *matchers), RATE_INTERVAL))

    def gauge(aggregation: str, metric: EnvoyMetric) -> str:
        return q.by(aggregation, upstream, envoy(metric, mesh_clusters))

    def ssl_rate(metric: EnvoyMetric) -> str:
        return q.by("sum", (Label.SERVICE.value,), q.rate(envoy(metric), RATE_INTERVAL))

    board = (
        _board(
            "grpcmesh-envoy",
            "grpcmesh / Envoy upstreams",
            "Upstream clusters as the sidecars and ingress see them: a cluster is "
            "<service>|<version> (or inbound|<port>, the local app). Legend: proxy's service → "
            "cluster.",
        )
        .with_row(_row("Traffic"))
        .with_panel(
            _timeseries(
                "Upstream requests/s",
                "Requests Envoy sent to each cluster.",
                _Unit.REQUESTS,
                _Target(rate_of(EnvoyMetric.UPSTREAM_RQ), legend),
            )
        )
        .with_panel(
            _timeseries(
                "Upstream 5xx/s",
                "HTTP 5xx: no healthy endpoint, overflow, reset. gRPC "
                "errors travel as 200 + grpc-status and show on the kit's panels.",
                _Unit.REQUESTS,
                _Target(
                    rate_of(EnvoyMetric.UPSTREAM_RQ_XX, q.eq("envoy_response_code_class", "5")),
                    legend,
                ),
            )
        )
        .with_panel(
            _timeseries(
                "Upstream latency p99",
                "Envoy's upstream request time.",
                _Unit.MILLISECONDS,
                _Target(
                    q.histogram_quantile(
                        0.99,
                        envoy(EnvoyMetric.UPSTREAM_RQ_TIME_BUCKET, mesh_clusters),
                        RATE_INTERVAL,
                        upstream,
                    ),
                    legend,
                ),
            )
        )
        .with_row(_row("Resilience"))
        .with_panel(
            _timeseries(
                "Timeouts/s",
                "Route timeouts and per-try timeouts.",
                _Unit.REQUESTS,
                _Target(rate_of(EnvoyMetric.UPSTREAM_RQ_TIMEOUT), f"timeout {legend}"),
                _Target(rate_of(EnvoyMetric.UPSTREAM_RQ_PER_TRY_TIMEOUT), f"per try {legend}"),
            )
        )
        .with_panel(
            _timeseries(
                "Retries/s",
                "Retries sent, retries that succeeded, and retries refused "
                "by the retry budget or circuit breaker.",
                _Unit.REQUESTS,
                _Target(rate_of(EnvoyMetric.UPSTREAM_RQ_RETRY), f"retry {legend}"),
                _Target(rate_of(EnvoyMetric.UPSTREAM_RQ_RETRY_SUCCESS), f"succeeded {legend}"),
                _Target(rate_of(EnvoyMetric.UPSTREAM_RQ_RETRY_OVERFLOW), f"refused {legend}"),
            )
        )
        .with_panel(
            _timeseries(
                "Circuit-breaker overflows/s",
                "Requests rejected because the pending queue was full.",
                _Unit.REQUESTS,
                _Target(rate_of(EnvoyMetric.UPSTREAM_RQ_PENDING_OVERFLOW), legend),
            )
        )
        .with_row(_row("Endpoints"))
        .with_panel(
            _timeseries(
                "Healthy endpoints",
                "Lowest healthy count any replica of the proxy's "
                "service sees, against the endpoints it knows.",
                _Unit.COUNT,
                _Target(gauge("min", EnvoyMetric.MEMBERSHIP_HEALTHY), f"healthy {legend}"),
                _Target(gauge("max", EnvoyMetric.MEMBERSHIP_TOTAL), f"total {legend}"),
                width=12,
            )
        )
        .with_panel(
            _timeseries(
                "Outlier ejections active",
                "Endpoints outlier detection has ejected right now.",
                _Unit.COUNT,
                _Target(gauge("max", EnvoyMetric.EJECTIONS_ACTIVE), legend),
                width=12,
            )
        )
        .with_row(_row("Authorization"))
        .with_panel(
            _timeseries(
                "Denied calls",
                "Calls a sidecar refused (PERMISSION_DENIED) because no rule of the called "
                "service's spec.authorization allows them, per window. Legend: called service ← "
                "caller (other: any caller the rules do not name): method.",
                _Unit.COUNT,
                _Target(denied_calls(RATE_INTERVAL), "{{service}} ← {{caller}}: {{method}}"),
                width=24,
            )
        )
        .with_row(_row("mTLS handshakes"))
        .with_panel(
            _timeseries(
                "Inbound handshakes/s",
                "TLS handshakes the sidecars' inbound listeners completed (mTLS callers let "
                "in), per proxy's service.",
                _Unit.OPS,
                _Target(ssl_rate(EnvoyMetric.LISTENER_SSL_HANDSHAKE), "{{service}}"),
                width=8,
            )
        )
        .with_panel(
            _timeseries(
                "Inbound handshake failures/s",
                "Callers the inbound listeners refused before any request, by reason: "
                "plaintext (connection error), no client certificate, a certificate not from "
                "the mesh CA, an identity outside the trust domain.",
                _Unit.OPS,
                *(
                    _Target(ssl_rate(metric), f"{{{{service}}}}: {reason}")
                    for metric, reason in HANDSHAKE_FAILURES
                ),
                width=16,
            )
        )
    )
    return _finish(board)


# --- all of them --------------------------------------------------------------------------------


def build_dashboards(catalog: MethodCatalog) -> tuple[model.Dashboard, ...]:
    """Overview, control plane, Envoy, and one per gRPC service in ``catalog``."""
    return (
        overview_dashboard(),
        control_plane_dashboard(),
        envoy_dashboard(),
        *(service_dashboard(s) for s in catalog.services),
    )


def all_queries(dashboards: Iterable[model.Dashboard]) -> list[PanelQuery]:
    """Every panel's PromQL, in dashboard and panel order."""
    found = []
    for board in dashboards:
        for panel in _panels(board):
            if isinstance(panel, model.RowPanel):
                continue
            for target in panel.targets or ():
                if isinstance(target, prometheus_m.Dataquery):
                    found.append(PanelQuery(board.title or "", panel.title or "", target.expr))
    return found


def for_prometheus(expr: str, *, rate_interval: str = "1m") -> str:
    """``expr`` as Grafana would send it, with its variables replaced. ``$1`` is label_replace's
    reference to a group, not a variable (Grafana leaves names it does not know alone)."""
    expanded = expr.replace(RATE_INTERVAL, rate_interval)
    if re.search(r"\$(?!\d)", expanded):
        raise ValueError(f"unexpanded Grafana variable in {expr!r}")
    return expanded


def dashboard_json(board: model.Dashboard) -> str:
    """The dashboard model as Grafana imports it (stable: keys sorted)."""
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dashboards(
    directory: Path, dashboards: Iterable[model.Dashboard] | None = None
) -> list[Path]:
    """Write each dashboard as ``<uid>.json`` in ``directory`` (created if missing); by default
    ``build_dashboards`` over the reference protos' catalog (``catalogs.load_catalog``)."""
    if dashboards is None:
        # Imported here: it loads the generated *_pb2 modules, which building needs no part of.
        from grpcmesh_control.mesh.catalogs import load_catalog

        dashboards = build_dashboards(load_catalog())
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for board in dashboards:
        path = directory / f"{board.uid}.json"
        path.write_text(dashboard_json(board))
        written.append(path)
    return written


def dashboard_configmaps(
    dashboards: Iterable[model.Dashboard],
    *,
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One ConfigMap per dashboard, labelled for the Grafana dashboard sidecar
    (``grafana_dashboard: "1"``), which loads every such ConfigMap's JSON files."""
    key, value = SIDECAR_LABEL
    maps = []
    for board in dashboards:
        metadata: dict[str, Any] = {"name": f"{board.uid}-dashboard"}
        if namespace is not None:
            metadata["namespace"] = namespace
        metadata["labels"] = {key: value, "app.kubernetes.io/part-of": "grpcmesh", **(labels or {})}
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": metadata,
                "data": {f"{board.uid}.json": dashboard_json(board)},
            }
        )
    return maps
