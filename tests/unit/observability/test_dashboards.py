"""Dashboards: complete (every panel queries something), true to the protos (a row per method),
spelled in the scrape model's jobs and the exporters' real metric names, and loadable by
Grafana's sidecar. Each query is evaluated by a real Prometheus in test_promtool.py."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_m
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from grpcmesh_control.host.metrics import ControlPlaneMetrics
from grpcmesh_control.mesh.certificates import NodeCertificate
from grpcmesh_control.mesh.model import MethodCatalog, MethodInfo, ServiceInfo
from grpcmesh_control.mesh.model.identity import workload_identity
from grpcmesh_control.mesh.translate.bootstrap import ADMIN_CLUSTER, XDS_CLUSTER
from grpcmesh_control.observability import Job
from grpcmesh_control.observability.dashboards import (
    RATE_INTERVAL,
    all_queries,
    build_dashboards,
    dashboard_configmaps,
    dashboard_json,
    for_prometheus,
    write_dashboards,
)
from grpcmesh_control.observability.signals import ENVOY_INTERNAL_CLUSTERS
from grpcmesh_kit.metrics import GrpcType, MetricsEndpoint

Dashboards = tuple[model.Dashboard, ...]
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")


def panels(board: model.Dashboard) -> list[model.Panel]:
    """Every non-row panel, including those inside collapsed rows."""
    found: list[model.Panel] = []
    for panel in board.panels or ():
        if isinstance(panel, model.RowPanel):
            found.extend(panel.panels)
        else:
            found.append(panel)
    return found


def rows(board: model.Dashboard) -> list[model.RowPanel]:
    return [p for p in board.panels or () if isinstance(p, model.RowPanel)]


def by_uid(dashboards: Dashboards, uid: str) -> model.Dashboard:
    (board,) = [b for b in dashboards if b.uid == uid]
    return board


def test_the_set_of_dashboards(dashboards: Dashboards, catalog: MethodCatalog) -> None:
    uids = [b.uid for b in dashboards]
    assert uids[:3] == ["grpcmesh-overview", "grpcmesh-control-plane", "grpcmesh-envoy"]
    assert len(uids) == 3 + len(catalog.services)
    assert len(set(uids)) == len(uids)
    assert all(uid and len(uid) <= 40 for uid in uids)  # Grafana's limit
    assert len({b.title for b in dashboards}) == len(dashboards)


def test_every_panel_has_a_prometheus_query(dashboards: Dashboards) -> None:
    for board in dashboards:
        for panel in panels(board):
            assert panel.targets, f"{board.title}: {panel.title}"
            for target in panel.targets:
                assert isinstance(target, prometheus_m.Dataquery)
                assert target.expr.strip(), f"{board.title}: {panel.title}"
                assert target.ref_id


def test_every_panel_reads_the_chosen_data_source(dashboards: Dashboards) -> None:
    for board in dashboards:
        variables = board.templating.list_val or []
        assert (variables[0].name, variables[0].type_val) == ("datasource", "datasource")
        for panel in panels(board):
            assert panel.datasource is not None
            assert panel.datasource.uid == "${datasource}", f"{board.title}: {panel.title}"


def test_panel_ids_are_unique_per_dashboard(dashboards: Dashboards) -> None:
    for board in dashboards:
        ids = [r.id_val for r in rows(board)] + [p.id_val for p in panels(board)]
        assert all(ids) and len(ids) == len(set(ids)), board.title


def test_all_queries_lists_every_target(dashboards: Dashboards) -> None:
    queries = all_queries(dashboards)
    assert len(queries) == sum(len(p.targets or ()) for b in dashboards for p in panels(b))
    assert {q.dashboard for q in queries} == {b.title for b in dashboards}
    assert all(q.panel and q.expr for q in queries)


def test_queries_expand_to_plain_promql(dashboards: Dashboards) -> None:
    for query in all_queries(dashboards):
        expanded = for_prometheus(query.expr, rate_interval="2m")
        assert not re.search(r"\$(?!\d)", expanded)  # $1: label_replace's group, kept
        assert (RATE_INTERVAL in query.expr) == ("[2m]" in expanded)
    with pytest.raises(ValueError, match="unexpanded"):
        for_prometheus('up{job="$job"}')


def test_every_selector_names_a_scrape_model_job(dashboards: Dashboards) -> None:
    jobs = {job.value for job in Job}
    for query in all_queries(dashboards):
        for metric, matchers in SELECTOR.findall(query.expr):
            found = re.search(r'job(=~?)"([^"]*)"', matchers)
            assert found, f"{query.panel}: {metric} without a job matcher"
            assert set(found.group(2).split("|")) <= jobs, query.expr


# --- (b) a row per method, from the protos ------------------------------------------------------


def test_each_service_has_a_row_per_proto_method(
    dashboards: Dashboards, catalog: MethodCatalog
) -> None:
    for service in catalog.services:
        short = service.name.rpartition(".")[2]
        board = by_uid(dashboards, f"grpcmesh-api-{short.lower()}")
        summary, *method_rows = rows(board)
        assert summary.title == "All methods" and not summary.collapsed
        methods = [m.name for m in service.methods]
        assert [(r.title or "").split(" · ")[0] for r in method_rows] == methods
        for row, method in zip(method_rows, service.methods, strict=True):
            assert row.collapsed  # queried only when opened
            for panel in row.panels:
                for target in panel.targets or ():
                    assert isinstance(target, prometheus_m.Dataquery)
                    assert f'grpc_service="{service.name}"' in target.expr
                    assert f'grpc_method="{method.name}"' in target.expr
            titles = [p.title for p in row.panels]
            assert ("Stream messages/s" in titles) == method.streaming, row.title


def test_row_titles_say_kind_and_retry_safety(dashboards: Dashboards) -> None:
    titles = {r.title for r in rows(by_uid(dashboards, "grpcmesh-api-orderservice"))}
    assert "WatchOrder · server stream · retry-safe" in titles
    titles = {r.title for r in rows(by_uid(dashboards, "grpcmesh-api-inventoryservice"))}
    assert "AdjustStock · unary · not retry-safe" in titles


def test_a_new_method_gets_its_row(catalog: MethodCatalog) -> None:
    payments = next(s for s in catalog.services if s.name.endswith("PaymentService"))
    grown = catalog.merged(
        MethodCatalog((ServiceInfo(payments.name, (*payments.methods, MethodInfo("Capture"))),))
    )
    board = by_uid(build_dashboards(grown), "grpcmesh-api-paymentservice")
    assert any((r.title or "").startswith("Capture · ") for r in rows(board))


# --- the metric names are the exporters' ------------------------------------------------------


def metric_names(dashboards: Dashboards, prefix: str) -> set[str]:
    return {
        metric
        for query in all_queries(dashboards)
        for metric, _ in SELECTOR.findall(query.expr)
        if metric.startswith(prefix)
    }


def exposed(text: bytes) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_kit_metric_names_are_the_kits(dashboards: Dashboards) -> None:
    endpoint = MetricsEndpoint()
    for side in (endpoint.server_side, endpoint.client_side):
        labels = endpoint.labels(GrpcType.UNARY, "/grpcmesh.shop.v1.PaymentService/Charge")
        side.started.labels(**labels).inc()
        side.handled.labels(**labels, grpc_code="OK").inc()
        side.msg_received.labels(**labels).inc()
        side.msg_sent.labels(**labels).inc()
        side.handling_seconds.labels(**labels).observe(0.01)
    used = metric_names(dashboards, "grpc_")
    assert used
    assert used <= exposed(generate_latest(endpoint.registry))


def test_control_plane_metric_names_are_the_control_planes(dashboards: Dashboards) -> None:
    metrics = ControlPlaneMetrics()
    metrics.rebuild_duration.observe(0.01)
    now = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
    held = NodeCertificate(
        "sidecar~orders~v1-0", workload_identity("orders"), now, now + dt.timedelta(hours=24), 1
    )
    metrics.observe_certificates(lambda: [held], lambda: now + dt.timedelta(days=3650))
    used = metric_names(dashboards, "grpcmesh_")
    assert used
    assert used <= exposed(metrics.exposition())


def test_internal_clusters_are_the_bootstraps() -> None:
    assert set(ENVOY_INTERNAL_CLUSTERS) == {XDS_CLUSTER, ADMIN_CLUSTER}


# --- output -------------------------------------------------------------------------------------


def test_json_is_grafana_dashboard_json_and_stable(
    dashboards: Dashboards, catalog: MethodCatalog
) -> None:
    rebuilt = build_dashboards(catalog)
    for board, again in zip(dashboards, rebuilt, strict=True):
        text = dashboard_json(board)
        assert text == dashboard_json(again)
        doc = json.loads(text)
        assert doc["uid"] == board.uid and doc["title"] == board.title
        assert doc["schemaVersion"] >= 36
        assert doc["tags"] == ["grpcmesh"]
        assert doc["templating"]["list"][0]["query"] == "prometheus"


def test_write_dashboards(tmp_path: Path, dashboards: Dashboards) -> None:
    written = write_dashboards(tmp_path / "given", dashboards)
    assert sorted(p.name for p in written) == sorted(f"{b.uid}.json" for b in dashboards)
    # Without dashboards: the reference protos' catalog, i.e. the same files.
    defaults = write_dashboards(tmp_path / "default")
    assert [p.read_text() for p in defaults] == [p.read_text() for p in written]


def test_configmaps_for_the_grafana_sidecar(dashboards: Dashboards) -> None:
    maps = dashboard_configmaps(dashboards, namespace="monitoring", labels={"team": "mesh"})
    assert len(maps) == len(dashboards)
    for cm, board in zip(maps, dashboards, strict=True):
        kubernetes_validate.validate(cm, "1.31.0", strict=True)
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["labels"]["team"] == "mesh"
        assert cm["metadata"]["namespace"] == "monitoring"
        ((name, text),) = cm["data"].items()
        assert name == f"{board.uid}.json"
        assert json.loads(text)["uid"] == board.uid
        # A ConfigMap holds at most 1 MiB.
        assert len(text.encode()) < 1024 * 1024
