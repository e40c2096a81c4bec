"""``python -m grpcmesh_control.observability write --out DIR``: every generated artefact.

DIR/
  rules/grpcmesh.rules.yaml        Prometheus rules file (rule_files)
  dashboards/<uid>.json            Grafana dashboards (import, or file provisioning)
  kubernetes/prometheusrule.yaml   the rules as a PrometheusRule
  kubernetes/podmonitors.yaml      the scrape model as PodMonitors
  kubernetes/dashboards.yaml       the dashboards as ConfigMaps for Grafana's sidecar

Run this (or the functions) wherever the files are needed; the Helm chart's committed copy is
`make chart-assets` (scripts/chart_assets.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.observability import _yaml
from grpcmesh_control.observability.alerts import RULES_FILE_NAME, prometheus_rule, write_rules
from grpcmesh_control.observability.dashboards import (
    build_dashboards,
    dashboard_configmaps,
    write_dashboards,
)
from grpcmesh_control.observability.scrape import pod_monitors


def write(out: Path, namespace: str | None) -> list[Path]:
    dashboards = build_dashboards(load_catalog())
    kubernetes = out / "kubernetes"
    kubernetes.mkdir(parents=True, exist_ok=True)
    written = [write_rules(out / "rules" / RULES_FILE_NAME)]
    written += write_dashboards(out / "dashboards", dashboards)
    documents = {
        "prometheusrule.yaml": [prometheus_rule(namespace=namespace)],
        "podmonitors.yaml": pod_monitors(namespace),
        "dashboards.yaml": dashboard_configmaps(dashboards, namespace=namespace),
    }
    for name, docs in documents.items():
        path = kubernetes / name
        path.write_text(_yaml.dump_all(docs))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpcmesh_control.observability")
    commands = parser.add_subparsers(dest="command", required=True)
    write_cmd = commands.add_parser("write", help="write rules, dashboards and Kubernetes objects")
    write_cmd.add_argument("--out", type=Path, required=True, help="directory to write into")
    write_cmd.add_argument("--namespace", help="metadata.namespace of the Kubernetes objects")
    args = parser.parse_args(argv)
    for path in write(args.out, args.namespace):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
