"""values.schema.json: Helm refuses wrong types, unknown keys and bad enums with a message that
names the key, and accepts the defaults and every matrix cell."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import helm_python
import pytest
import yaml
from jsonschema import Draft7Validator

from .chart import CHART, MATRIX, Obj, chart

SCHEMA: Obj = json.loads((CHART / "values.schema.json").read_text())


def schema_error(values: Obj) -> str:
    with pytest.raises(helm_python.HelmValuesError) as raised:
        chart().validate_schema(values)
    return str(raised.value)


def test_schema_is_draft_7() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(SCHEMA)


def test_accepts_the_defaults() -> None:
    chart().validate_schema({})
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    chart().validate_schema(defaults)
    # The same values, checked by a second implementation (Python's jsonschema).
    assert list(Draft7Validator(SCHEMA).iter_errors(defaults)) == []


@pytest.mark.parametrize("cell", MATRIX, ids=[c.id for c in MATRIX])
def test_accepts_every_matrix_cell(cell: Any) -> None:
    chart().validate_schema(cell.values())


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"operator": {"replicas": "two"}}, "/operator/replicas"),
        ({"gateway": {"enabled": "yes"}}, "/gateway/enabled"),
        ({"operator": {"ports": {"xds": 70000}}}, "/operator/ports/xds"),
        (
            {"operator": {"resources": {"limits": {"cpu": "lots"}}}},
            "/operator/resources/limits/cpu",
        ),
        ({"global": {"imagePullSecrets": "regcred"}}, "/global/imagePullSecrets"),
        ({"tracing": {"otlpEndpoint": "collector"}}, "/tracing/otlpEndpoint"),
        ({"tracing": {"samplingRatio": 2}}, "/tracing/samplingRatio"),
    ],
    ids=[
        "replicas-string",
        "bool-string",
        "port-range",
        "bad-quantity",
        "list-string",
        "otlp-without-port",
        "ratio-above-one",
    ],
)
def test_rejects_a_wrong_type(values: Obj, named: str) -> None:
    assert named in schema_error(values)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"fooBar": 1}, "fooBar"),
        ({"operator": {"replica": 2}}, "replica"),
        ({"gateway": {"service": {"nodePort": 30080}}}, "nodePort"),
        ({"referenceServices": {"catalog": {"image": {"tags": "v1"}}}}, "tags"),
        ({"monitoring": {"dashboards": {"folder": "mesh"}}}, "folder"),
    ],
    ids=["top-level", "operator", "gateway-service", "image", "monitoring"],
)
def test_rejects_an_unknown_key(values: Obj, key: str) -> None:
    message = schema_error(values)
    assert f"'{key}' not allowed" in message


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"provider": "istio"}, "/provider"),
        ({"operator": {"logLevel": "verbose"}}, "/operator/logLevel"),
        ({"webhooks": {"failurePolicy": "Retry"}}, "/webhooks/failurePolicy"),
        ({"webhooks": {"missingBackends": "ignore"}}, "/webhooks/missingBackends"),
        ({"gateway": {"service": {"type": "ExternalName"}}}, "/gateway/service/type"),
    ],
    ids=["provider", "log-level", "failure-policy", "missing-backends", "service-type"],
)
def test_rejects_a_bad_enum(values: Obj, named: str) -> None:
    message = schema_error(values)
    assert named in message
    assert "must be one of" in message


def test_rejects_latest_and_malformed_images() -> None:
    assert "/operator/image/tag" in schema_error({"operator": {"image": {"tag": "latest"}}})
    assert "/proxy/image/digest" in schema_error({"proxy": {"image": {"digest": "sha256:xyz"}}})
    assert "/gateway/image/tag" in schema_error({"gateway": {"image": {"tag": "v1 .0"}}})


def test_requires_requests_and_limits() -> None:
    # null removes a default in Helm; the schema then misses the limits.
    values: Obj = {"gateway": {"resources": {"limits": None}}}
    assert "/gateway/resources" in schema_error(values)


def test_an_issuer_ref_needs_a_name() -> None:
    message = schema_error({"webhooks": {"certManager": {"issuerRef": {"kind": "Issuer"}}}})
    assert "/webhooks/certManager/issuerRef" in message
    chart().validate_schema(
        {"webhooks": {"certManager": {"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}}
    )


def _objects(schema: Obj, path: str = "") -> Iterator[tuple[str, Obj]]:
    if schema.get("type") == "object":
        yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _objects(sub, f"{path}.{name}")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _objects(items, f"{path}[]")


def test_every_object_level_refuses_unknown_keys() -> None:
    """Objects with properties are closed; the rest are maps of strings (labels, annotations,
    node selectors) or Kubernetes objects passed through as is (affinity terms)."""
    for path, schema in _objects(SCHEMA):
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, path
        elif "additionalProperties" in schema:
            assert schema["additionalProperties"] == {"type": "string"}, path
        else:
            assert "passed through" in schema.get("description", ""), path
