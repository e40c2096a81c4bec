"""Rules: the burn-rate arithmetic, the SLIs' agreement with the kit's histogram, and the
PrometheusRule form. Whether the alerts fire is proven by ``promtool test rules`` over
tests/fixtures/promtool/ (tests/integration/test_promtool.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.utils import floatToGoString

from grpcmesh_control.observability import (
    RULES_FILE_NAME,
    Alert,
    BurnRateWindow,
    Severity,
    SloPolicy,
    prometheus_rule,
    rule_expressions,
    rule_groups,
    rules_file,
    write_rules,
)
from grpcmesh_control.observability.alerts import error_ratio_record, slow_ratio_record
from grpcmesh_kit.metrics import LATENCY_BUCKETS
from tests.kube_schemas import crd_errors

RECORD_NAME = re.compile(r"service:grpc_server_\w+:rate\w+")


def alerts(groups: list[dict[str, Any]], name: Alert) -> list[dict[str, Any]]:
    return [r for g in groups for r in g["rules"] if r.get("alert") == name]


def records(groups: list[dict[str, Any]]) -> dict[str, str]:
    return {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}


def test_groups() -> None:
    assert [g["name"] for g in rule_groups()] == [
        "grpcmesh-slo.rules",
        "grpcmesh-slo.alerts",
        "grpcmesh-mesh.alerts",
    ]


def test_every_alert_is_defined_labelled_and_explained() -> None:
    groups = rule_groups()
    defined = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert defined == {a.value for a in Alert}
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in {s.value for s in Severity}
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_default_burn_rate_thresholds() -> None:
    groups = rule_groups()
    error = [(a["labels"]["long"], a["labels"]["short"], a["expr"]) for a in
             alerts(groups, Alert.ERROR_BUDGET_BURN)]  # fmt: skip
    assert error == [
        (
            "1h",
            "5m",
            "service:grpc_server_error_ratio:rate1h > 0.0144\n"
            "and\n"
            "service:grpc_server_error_ratio:rate5m > 0.0144",
        ),
        (
            "6h",
            "30m",
            "service:grpc_server_error_ratio:rate6h > 0.006\n"
            "and\n"
            "service:grpc_server_error_ratio:rate30m > 0.006",
        ),
    ]
    latency = [a["expr"] for a in alerts(groups, Alert.LATENCY_BUDGET_BURN)]
    assert [re.findall(r"> ([0-9.]+)", e) for e in latency] == [["0.144"] * 2, ["0.06"] * 2]


def test_a_custom_policy() -> None:
    policy = SloPolicy(
        availability=0.99,
        windows=(BurnRateWindow("2h", "10m", 10, Severity.WARNING, "5m"),),
    )
    (burn,) = alerts(rule_groups(policy), Alert.ERROR_BUDGET_BURN)
    assert burn["expr"].split("\n") == [
        f"{error_ratio_record('2h')} > 0.1",
        "and",
        f"{error_ratio_record('10m')} > 0.1",
    ]
    assert (burn["for"], burn["labels"]["severity"]) == ("5m", "warning")
    assert "Objective: 99% over 30 days" in burn["annotations"]["description"]
    assert set(records(rule_groups(policy))) == {
        f(w) for f in (error_ratio_record, slow_ratio_record) for w in ("10m", "2h")
    }


@pytest.mark.parametrize(
    "fields",
    [{"availability": 1.0}, {"latency": 0}, {"latency_threshold_seconds": 0}, {"windows": ()}],
)
def test_impossible_policies_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="SloPolicy"):
        SloPolicy(**fields)


def test_alerts_only_use_recorded_ratios() -> None:
    groups = rule_groups()
    recorded = set(records(groups))
    for expression in rule_expressions(groups):
        if expression.group.endswith(".alerts"):
            assert set(RECORD_NAME.findall(expression.expr)) <= recorded, expression


def test_latency_sli_counts_a_bucket_the_kit_exports() -> None:
    policy = SloPolicy()
    assert policy.latency_threshold_seconds in LATENCY_BUCKETS
    slow = records(rule_groups(policy))[slow_ratio_record("5m")]
    # The le label as the kit's client library writes it.
    assert f'le="{floatToGoString(policy.latency_threshold_seconds)}"' in slow
    assert 'grpc_type="unary"' in slow


@pytest.mark.parametrize("threshold", [1.0, 2.5, 0.005])
def test_le_matcher_accepts_python_and_go_spellings(threshold: float) -> None:
    slow = records(rule_groups(SloPolicy(latency_threshold_seconds=threshold)))[
        slow_ratio_record("5m")
    ]
    ((op, value),) = re.findall(r'le(=~?)"([^"]*)"', slow)
    python, go = floatToGoString(threshold), f"{threshold:g}"  # Go: FormatFloat(f, 'g', -1, 64)
    if op == "=~":
        pattern = value.replace("\\\\", "\\")  # undo PromQL's string escaping
        assert re.fullmatch(pattern, python) and re.fullmatch(pattern, go)
    else:
        assert value == python == go


def test_fault_codes_cover_both_spellings() -> None:
    expr = records(rule_groups())[error_ratio_record("5m")]
    (codes,) = re.findall(r'grpc_code=~"([^"]*)"', expr)
    assert {"UNAVAILABLE", "Unavailable", "DEADLINE_EXCEEDED", "DeadlineExceeded"} <= set(
        codes.split("|")
    )
    assert not {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "NotFound"} & set(codes.split("|"))


# --- output -------------------------------------------------------------------------------------


def test_write_rules(tmp_path: Path) -> None:
    path = write_rules(tmp_path)
    assert path == tmp_path / RULES_FILE_NAME
    text = path.read_text()
    assert yaml.safe_load(text) == rules_file()
    assert "expr: |-" in text  # multi-line PromQL stays readable
    named = write_rules(tmp_path / "sub" / "other.yaml")
    assert named.read_text() == text


def test_prometheus_rule_validates_against_the_crd() -> None:
    rule = prometheus_rule(namespace="monitoring", labels={"release": "kube-prometheus-stack"})
    assert crd_errors(rule) == []  # closed: a field the API server prunes fails too
    assert rule["spec"]["groups"] == rule_groups()
    assert rule["metadata"] == {
        "name": "grpcmesh",
        "namespace": "monitoring",
        "labels": {"app.kubernetes.io/part-of": "grpcmesh", "release": "kube-prometheus-stack"},
    }


def test_rule_expressions_name_every_rule() -> None:
    groups = rule_groups()
    listed = rule_expressions(groups)
    assert len(listed) == sum(len(g["rules"]) for g in groups)
    assert listed[0].rule == error_ratio_record("5m")
    assert all(e.expr for e in listed)
