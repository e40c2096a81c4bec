"""The observability package's surface is pinned, and it stays pure: no grpc, aiohttp or kopf,
and no Grafana SDK (the operator imports the package at run time, and its image has no SDK;
the dashboards are imported from ``observability.dashboards``)."""

from __future__ import annotations

import subprocess
import sys

import grpcmesh_control.observability as observability


def test_observability_all() -> None:
    assert sorted(observability.__all__) == sorted(
        [
            "RULES_FILE_NAME", "Alert", "AppTarget", "BurnRateWindow", "ControlPlaneTarget",
            "Job", "Label", "PodConventions", "ProxyKind", "ProxyTarget", "ReplicaAddresses",
            "RuleExpression", "ScrapeModelError", "ScrapeTargets", "Severity", "SloPolicy",
            "pod_monitors", "prometheus_config", "prometheus_rule", "rule_expressions",
            "rule_groups", "rules_file", "write_rules",
        ]
    )  # fmt: skip
    assert all(hasattr(observability, name) for name in observability.__all__)


def test_observability_imports_neither_grpc_nor_aiohttp_nor_kopf_nor_grafana() -> None:
    script = (
        "import sys, grpcmesh_control.observability;"
        "print(' '.join(sorted(m for m in sys.modules"
        " if m.split('.')[0] in {'grpc', 'aiohttp', 'kopf', 'grafana_foundation_sdk'})))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split() == []
