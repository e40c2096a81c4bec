"""Prometheus rules: per-service SLOs with multi-window, multi-burn-rate alerts, and mesh health.

SLOs (per MeshService, the ``service`` label, from the kit's server-side metrics):

- availability: the share of requests not answered with a server fault
  (``signals.SERVER_FAULT_CODES``) — 99.9% by default;
- latency: the share of *unary* requests handled within a bucket boundary (250 ms by default) —
  99% by default. Streams are left out: their "handling time" is the stream's lifetime.

Each SLO alerts when its error budget burns too fast over a long window *and* a short one (the
short window makes the alert stop soon after the problem does). Defaults are the SRE workbook's
pair for a 30-day budget: 14.4x over 1h/5m (2% of the budget in an hour) and 6x over 6h/30m (5%
in six hours). Ratios are recorded per window so alert expressions stay cheap.

Mesh health: xDS NACKs, proxies disconnected from the control plane, the control plane down,
failing snapshot rebuilds, invalid resource files, and scrape targets down.

Output: ``rules_file()`` (a rules file for ``rule_files``), ``prometheus_rule()`` (the same groups
as a prometheus-operator ``PrometheusRule``), ``write_rules()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from grpcmesh_control.observability import _promql as q
from grpcmesh_control.observability import _yaml
from grpcmesh_control.observability.scrape import Job, Label
from grpcmesh_control.observability.signals import (
    SERVER_FAULT_CODES,
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
    "DEFAULT_WINDOWS",
    "RULES_FILE_NAME",
    "Alert",
    "BurnRateWindow",
    "RuleExpression",
    "Severity",
    "SloPolicy",
    "error_ratio_record",
    "prometheus_rule",
    "rule_expressions",
    "rule_groups",
    "rules_file",
    "slow_ratio_record",
    "write_rules",
]

RULES_FILE_NAME = "grpcmesh.rules.yaml"


class Severity(StrEnum):
    """The ``severity`` label Alertmanager routes on: critical pages, warning opens a ticket."""

    CRITICAL = "critical"
    WARNING = "warning"


class Alert(StrEnum):
    """Every alert name the rules define."""

    ERROR_BUDGET_BURN = "GrpcmeshErrorBudgetBurn"
    LATENCY_BUDGET_BURN = "GrpcmeshLatencyBudgetBurn"
    XDS_CONFIG_REJECTED = "GrpcmeshXdsConfigRejected"
    PROXY_DISCONNECTED = "GrpcmeshProxyDisconnected"
    PROXIES_NOT_CONNECTED = "GrpcmeshProxiesNotConnected"
    CONTROL_PLANE_DOWN = "GrpcmeshControlPlaneDown"
    SNAPSHOT_REBUILD_FAILING = "GrpcmeshSnapshotRebuildFailing"
    INVALID_RESOURCES = "GrpcmeshInvalidResources"
    TARGET_DOWN = "GrpcmeshTargetDown"
    CALLS_DENIED = "GrpcmeshCallsDenied"
    WORKLOAD_CERTIFICATE_EXPIRING = "GrpcmeshWorkloadCertificateExpiring"
    MESH_ROOTS_EXPIRING = "GrpcmeshMeshRootsExpiring"


CERTIFICATE_LIFE_LEFT = 0.25
"""``GrpcmeshWorkloadCertificateExpiring`` fires when a certificate has less than this fraction of
its lifetime left: renewal (at half life by default) has failed for a quarter of it."""

ROOTS_WARNING_DAYS = 30
"""``GrpcmeshMeshRootsExpiring`` fires this many days before the mesh roots expire."""


@dataclass(frozen=True)
class BurnRateWindow:
    """Alert when the budget burns ``factor`` times faster than sustainable over both windows."""

    long: str
    short: str
    factor: float
    severity: Severity
    for_: str
    """How long both windows must stay above the threshold: rides out one odd evaluation."""


DEFAULT_WINDOWS = (
    BurnRateWindow("1h", "5m", 14.4, Severity.CRITICAL, "2m"),
    BurnRateWindow("6h", "30m", 6.0, Severity.CRITICAL, "15m"),
)


@dataclass(frozen=True)
class SloPolicy:
    """The objectives every MeshService is held to (one policy for the whole mesh for now)."""

    availability: float = 0.999
    """Share of requests that must not end in a server fault."""
    latency: float = 0.99
    """Share of unary requests that must finish within ``latency_threshold_seconds``."""
    latency_threshold_seconds: float = 0.25
    """Must be a bucket boundary of ``grpc_server_handling_seconds`` (the kit's
    ``LATENCY_BUCKETS``): the SLI counts that bucket, it cannot interpolate."""
    period_days: int = 30
    """The budget's period; only used to say in alerts how long the budget would last."""
    windows: tuple[BurnRateWindow, ...] = DEFAULT_WINDOWS

    def __post_init__(self) -> None:
        for name in ("availability", "latency"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"SloPolicy.{name} must be between 0 and 1 (exclusive)")
        if self.latency_threshold_seconds <= 0 or not self.windows:
            raise ValueError("SloPolicy needs a positive latency threshold and burn windows")

    @property
    def rate_windows(self) -> tuple[str, ...]:
        """Every window a ratio is recorded for, shortest first as written in ``windows``."""
        seen: dict[str, None] = {}
        for w in self.windows:
            seen.setdefault(w.short)
            seen.setdefault(w.long)
        return tuple(seen)


class RuleExpression(NamedTuple):
    """One rule's PromQL, named by group and by record or alert name."""

    group: str
    rule: str
    expr: str


def error_ratio_record(window: str) -> str:
    """Recorded share of requests that ended in a server fault, per ``service``."""
    return f"service:grpc_server_error_ratio:rate{window}"


def slow_ratio_record(window: str) -> str:
    """Recorded share of unary requests slower than the latency threshold, per ``service``."""
    return f"service:grpc_server_slow_ratio:rate{window}"


# --- rendering helpers --------------------------------------------------------------------------


def _number(value: float) -> str:
    # round() hides float noise such as 14.4 * (1 - 0.999) == 0.014400000000000012.
    return repr(round(value, 12))


def _percent(ratio: float) -> str:
    return f"{round(ratio * 100, 6):g}%"


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _le(seconds: float) -> q.Matcher:
    """The bucket at ``seconds``. Python's client writes ``le="1.0"`` where Go's writes
    ``le="1"``; whole seconds match both."""
    if float(seconds).is_integer():
        return q.regex("le", rf"{int(seconds)}(\.0)?")
    return q.eq("le", repr(float(seconds)))


# --- SLO rules ----------------------------------------------------------------------------------

_BY_SERVICE = (Label.SERVICE.value,)


def _recording_rules(policy: SloPolicy) -> list[dict[str, Any]]:
    handled = KitMetric.HANDLED.of(Side.SERVER)
    count = KitMetric.HANDLING_SECONDS_COUNT.of(Side.SERVER)
    bucket = KitMetric.HANDLING_SECONDS_BUCKET.of(Side.SERVER)
    unary = q.eq("grpc_type", "unary")
    rules: list[dict[str, Any]] = []
    for w in policy.rate_windows:
        total = q.by("sum", _BY_SERVICE, q.rate(app(handled), w))
        faults = q.by("sum", _BY_SERVICE, q.rate(app(handled, server_fault()), w))
        # "or total * 0": a service without a single fault series has ratio 0, not no data.
        rules.append(
            {"record": error_ratio_record(w), "expr": f"({faults} or {total} * 0)\n/\n{total}"}
        )
        within = q.by(
            "sum", _BY_SERVICE, q.rate(app(bucket, unary, _le(policy.latency_threshold_seconds)), w)
        )
        all_unary = q.by("sum", _BY_SERVICE, q.rate(app(count, unary), w))
        rules.append(
            {"record": slow_ratio_record(w), "expr": f"1 - (\n{within}\n/\n{all_unary}\n)"}
        )
    return rules


def _burn_alerts(
    policy: SloPolicy,
    alert: Alert,
    objective: float,
    record: Callable[[str], str],
    what: str,
) -> list[dict[str, Any]]:
    budget = 1 - objective
    rules = []
    for w in policy.windows:
        threshold = _number(w.factor * budget)
        days = policy.period_days / w.factor
        rules.append(
            {
                "alert": alert.value,
                "expr": f"{record(w.long)} > {threshold}\nand\n{record(w.short)} > {threshold}",
                "for": w.for_,
                "labels": {"severity": w.severity.value, "long": w.long, "short": w.short},
                "annotations": {
                    "summary": (
                        f"{{{{ $labels.service }}}} burns its {_budget_name(alert)} budget "
                        f"{w.factor:g}x too fast"
                    ),
                    "description": (
                        f"{{{{ $labels.service }}}}: {{{{ $value | humanizePercentage }}}} of "
                        f"{what} over the last {w.long} (and still over the last {w.short}). "
                        f"Objective: {_percent(objective)} over {policy.period_days} days; at this "
                        f"rate the budget is spent in {days:.2g} days."
                    ),
                },
            }
        )
    return rules


def _budget_name(alert: Alert) -> str:
    return "latency" if alert is Alert.LATENCY_BUDGET_BURN else "error"


# --- mesh health --------------------------------------------------------------------------------


def _mesh_alerts() -> list[dict[str, Any]]:
    proxy_identity = (Label.SERVICE, Label.VERSION, Label.REPLICA, Label.PROXY)
    return [
        {
            "alert": Alert.XDS_CONFIG_REJECTED.value,
            "expr": q.by(
                "sum", ("type",), q.increase(control_plane(ControlPlaneMetric.NACKS), "5m")
            )
            + " > 0",
            "labels": {"severity": Severity.WARNING.value},
            "annotations": {
                "summary": "An Envoy rejected (NACKed) {{ $labels.type }} config",
                "description": (
                    "The control plane's {{ $labels.type }} resources were NACKed in the last 5 "
                    "minutes; the Envoy keeps serving its previous config. The control plane's "
                    "GET /status names the node and Envoy's error message."
                ),
            },
        },
        {
            "alert": Alert.PROXY_DISCONNECTED.value,
            "expr": q.by("min", proxy_identity, envoy(EnvoyMetric.CONTROL_PLANE_CONNECTED))
            + " == 0",
            "for": "1m",
            "labels": {"severity": Severity.WARNING.value},
            "annotations": {
                "summary": "{{ $labels.proxy }} {{ $labels.service }}/{{ $labels.replica }} "
                "lost its xDS stream",
                "description": (
                    "This Envoy has had no connection to the control plane for a minute: it keeps "
                    "its last config, but endpoint and policy changes no longer reach it."
                ),
            },
        },
        {
            "alert": Alert.PROXIES_NOT_CONNECTED.value,
            "expr": (
                f"sum({control_plane(ControlPlaneMetric.CONNECTED_PROXIES)})\n<\n"
                f"count({q.selector('up', q.eq('job', Job.ENVOY))} == 1)"
            ),
            "for": "2m",
            "labels": {"severity": Severity.WARNING.value},
            "annotations": {
                "summary": "Fewer proxies hold an xDS stream than Envoys are running",
                "description": (
                    "The control plane counts {{ $value }} connected proxies, fewer than the "
                    "Envoys Prometheus scrapes. Envoys without a stream miss config changes."
                ),
            },
        },
        {
            "alert": Alert.CONTROL_PLANE_DOWN.value,
            "expr": q.selector("up", q.eq("job", Job.CONTROL_PLANE)) + " == 0",
            "for": "1m",
            "labels": {"severity": Severity.CRITICAL.value},
            "annotations": {
                "summary": "The grpcmesh control plane is down",
                "description": (
                    "{{ $labels.instance }} has not answered scrapes for a minute. Envoys keep "
                    "their last config, but no change (endpoints, policies) reaches them."
                ),
            },
        },
        {
            "alert": Alert.SNAPSHOT_REBUILD_FAILING.value,
            "expr": q.by(
                "sum", (), q.increase(control_plane(ControlPlaneMetric.REBUILD_ERRORS), "10m")
            )
            + " > 0",
            "labels": {"severity": Severity.WARNING.value},
            "annotations": {
                "summary": "xDS snapshot rebuilds failed",
                "description": (
                    "At least one snapshot rebuild failed in the last 10 minutes; proxies keep "
                    "the last good snapshot. The control plane's GET /status and log say why."
                ),
            },
        },
        {
            "alert": Alert.INVALID_RESOURCES.value,
            "expr": f"max({control_plane(ControlPlaneMetric.SOURCE_PROBLEMS)}) > 0",
            "for": "5m",
            "labels": {"severity": Severity.WARNING.value},
            "annotations": {
                "summary": "{{ $value }} mesh resource files are invalid",
                "description": (
                    "The control plane ignores invalid MeshService/endpoint files and keeps their "
                    "last valid content. GET /status lists the problems by file and field."
                ),
            },
        },
        {
            "alert": Alert.CALLS_DENIED.value,
            "expr": denied_calls("5m") + " > 0",
            "labels": {"severity": Severity.WARNING.value},
            "annotations": {
                "summary": "{{ $labels.caller }} was refused {{ $labels.method }} on "
                "{{ $labels.service }}",
                "description": (
                    "{{ $value }} calls in the last 5 minutes that no rule of the service's "
                    "spec.authorization allows ended PERMISSION_DENIED at its sidecar: a caller "
                    'missing from the rules, or one that should not call at all. "other" is '
                    "any caller the rules do not name."
                ),
            },
        },
        *_certificate_alerts(),
        {
            "alert": Alert.TARGET_DOWN.value,
            "expr": q.selector("up", q.regex("job", f"{Job.APP}|{Job.ENVOY}")) + " == 0",
            "for": "2m",
            "labels": {"severity": Severity.WARNING.value},
            "annotations": {
                "summary": "{{ $labels.job }} {{ $labels.service }}/{{ $labels.replica }} is down",
                "description": "{{ $labels.instance }} has not answered scrapes for 2 minutes.",
            },
        },
    ]


def _certificate_alerts() -> list[dict[str, Any]]:
    expiry = control_plane(ControlPlaneMetric.WORKLOAD_CERT_EXPIRY)
    issued = control_plane(ControlPlaneMetric.WORKLOAD_CERT_ISSUED)
    roots = control_plane(ControlPlaneMetric.ROOTS_EXPIRY)
    return [
        {
            "alert": Alert.WORKLOAD_CERTIFICATE_EXPIRING.value,
            "expr": (
                f"({expiry} - time())\n< {_number(CERTIFICATE_LIFE_LEFT)} * ({expiry} - {issued})"
            ),
            "labels": {"severity": Severity.CRITICAL.value},
            "annotations": {
                "summary": "{{ $labels.node }}'s workload certificate expires in "
                "{{ $value | humanizeDuration }}",
                "description": (
                    "The certificate of {{ $labels.identity }} has less than "
                    f"{_percent(CERTIFICATE_LIFE_LEFT)} of its lifetime left: the control plane "
                    "renews at half life, so renewal has been failing. When it expires, the "
                    "node's mTLS handshakes fail and so do its calls. The control plane's log "
                    "and GET /status (the node's secrets ACK) say why."
                ),
            },
        },
        {
            "alert": Alert.MESH_ROOTS_EXPIRING.value,
            "expr": f"min({roots}) - time() < {ROOTS_WARNING_DAYS * 86400}",
            "labels": {"severity": Severity.WARNING.value},
            "annotations": {
                "summary": "The mesh roots expire in {{ $value | humanizeDuration }}",
                "description": (
                    f"A mesh root (or the CA's intermediate) expires within {ROOTS_WARNING_DAYS} "
                    "days; past it no workload certificate verifies and every call between "
                    "sidecars fails. Rotate it as docs/security.md (Root rotation) says."
                ),
            },
        },
    ]


# --- output -------------------------------------------------------------------------------------


def rule_groups(policy: SloPolicy | None = None) -> list[dict[str, Any]]:
    """The rule groups, as Prometheus' rules file and ``PrometheusRule.spec.groups`` spell them."""
    policy = policy or SloPolicy()
    return [
        {"name": "grpcmesh-slo.rules", "rules": _recording_rules(policy)},
        {
            "name": "grpcmesh-slo.alerts",
            "rules": [
                *_burn_alerts(
                    policy,
                    Alert.ERROR_BUDGET_BURN,
                    policy.availability,
                    error_ratio_record,
                    f"requests failed with a server fault ({', '.join(SERVER_FAULT_CODES)})",
                ),
                *_burn_alerts(
                    policy,
                    Alert.LATENCY_BUDGET_BURN,
                    policy.latency,
                    slow_ratio_record,
                    f"unary requests took longer than {_seconds(policy.latency_threshold_seconds)}",
                ),
            ],
        },
        {"name": "grpcmesh-mesh.alerts", "rules": _mesh_alerts()},
    ]


def rules_file(policy: SloPolicy | None = None) -> dict[str, Any]:
    """A Prometheus rules file (``promtool check rules`` format)."""
    return {"groups": rule_groups(policy)}


def prometheus_rule(
    policy: SloPolicy | None = None,
    *,
    name: str = "grpcmesh",
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The same rules as a ``monitoring.coreos.com/v1`` PrometheusRule. ``labels`` are what the
    Prometheus' ``ruleSelector`` matches (e.g. ``{"release": "kube-prometheus-stack"}``)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/part-of": "grpcmesh", **(labels or {})}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": rule_groups(policy)},
    }


def write_rules(path: Path, policy: SloPolicy | None = None) -> Path:
    """Write ``rules_file(policy)`` as YAML to ``path`` (a file, or a directory to put
    ``RULES_FILE_NAME`` in)."""
    target = path / RULES_FILE_NAME if path.is_dir() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(_yaml.dump(rules_file(policy)))
    return target


def rule_expressions(groups: Sequence[dict[str, Any]]) -> list[RuleExpression]:
    """Every rule's expression, e.g. to evaluate each against a live Prometheus."""
    return [
        RuleExpression(group["name"], rule.get("record") or rule["alert"], rule["expr"])
        for group in groups
        for rule in group["rules"]
    ]
