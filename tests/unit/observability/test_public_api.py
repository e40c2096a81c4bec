"""The observability package's surface is pinned, and it stays pure: no grpc, aiohttp or kopf."""

from __future__ import annotations

import subprocess
import sys

import grpcmesh_control.observability as observability


def test_observability_all() -> None:
    assert sorted(observability.__all__) == sorted(
        [
            "RULES_FILE_NAME", "Alert", "AppTarget", "BurnRateWindow", "ControlPlaneTarget",
            "Job", "Label", "PanelQuery", "PodConventions", "ProxyKind", "ProxyTarget",
            "ReplicaAddresses", "RuleExpression", "ScrapeModelError", "ScrapeTargets", "Severity",
            "SloPolicy", "all_queries", "build_dashboards", "dashboard_configmaps",
            "for_prometheus", "pod_monitors", "prometheus_config", "prometheus_rule",
            "rule_expressions", "rule_groups", "rules_file", "write_dashboards", "write_rules",
        ]
    )  # fmt: skip
    assert all(hasattr(observability, name) for name in observability.__all__)


def test_observability_imports_neither_grpc_nor_aiohttp_nor_kopf() -> None:
    script = (
        "import sys, grpcmesh_control.observability;"
        "print(' '.join(sorted(m for m in sys.modules"
        " if m.split('.')[0] in {'grpc', 'aiohttp', 'kopf'})))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split() == []
