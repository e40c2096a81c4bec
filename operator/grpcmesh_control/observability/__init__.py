"""Observability as code: the scrape model, Grafana dashboards and Prometheus rules (pure).

Nothing here talks to a network or imports grpc, aiohttp or kopf: these are functions from the
mesh's conventions (job and label names, the method catalog, SLO policy) to documents —
prometheus.yml, dashboard JSON, rules files, PrometheusRule/PodMonitor/ConfigMap objects.
``python -m grpcmesh_control.observability write --out DIR`` writes them all.

The Grafana dashboards are imported from their module (``observability.dashboards``), not
re-exported here: they need the Grafana SDK (the ``local`` extra), and the operator imports
this package at run time without it.
"""

from __future__ import annotations

from grpcmesh_control.observability.alerts import (
    RULES_FILE_NAME,
    Alert,
    BurnRateWindow,
    RuleExpression,
    Severity,
    SloPolicy,
    prometheus_rule,
    rule_expressions,
    rule_groups,
    rules_file,
    write_rules,
)
from grpcmesh_control.observability.scrape import (
    AppTarget,
    ControlPlaneTarget,
    Job,
    Label,
    PodConventions,
    ProxyKind,
    ProxyTarget,
    ReplicaAddresses,
    ScrapeModelError,
    ScrapeTargets,
    pod_monitors,
    prometheus_config,
)

__all__ = [
    "RULES_FILE_NAME",
    "Alert",
    "AppTarget",
    "BurnRateWindow",
    "ControlPlaneTarget",
    "Job",
    "Label",
    "PodConventions",
    "ProxyKind",
    "ProxyTarget",
    "ReplicaAddresses",
    "RuleExpression",
    "ScrapeModelError",
    "ScrapeTargets",
    "Severity",
    "SloPolicy",
    "pod_monitors",
    "prometheus_config",
    "prometheus_rule",
    "rule_expressions",
    "rule_groups",
    "rules_file",
    "write_rules",
]
