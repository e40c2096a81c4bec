"""The CRD file: installable (structural schema rules the API server enforces), documented, and
in agreement with the model's enums and duration syntax (one source of truth)."""

from __future__ import annotations

from typing import Any

import pytest

from grpcmesh_control.mesh.model import LoadBalancer, RetryOn
from grpcmesh_control.mesh.model.durations import DURATION_PATTERN
from grpcmesh_control.mesh.model.schema import API_VERSION, CRD_PATH, load_crd, openapi_schema
from tests.kube_schemas import schema_nodes as nodes


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load_crd(CRD_PATH)


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return openapi_schema(crd)


def test_identity(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "meshservices.grpcmesh.io"
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (
        "grpcmesh.io",
        "Namespaced",
        "MeshService",
    )
    (version,) = spec["versions"]
    assert f"{spec['group']}/{version['name']}" == API_VERSION
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert {"Port", "Replicas", "Endpoints", "Acked", "Age"} <= set(columns)


def test_every_node_has_a_type_except_int_or_string(schema: dict[str, Any]) -> None:
    for path, node in nodes(schema):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "type" in node, path


def test_no_additional_properties_next_to_properties(schema: dict[str, Any]) -> None:
    # The API server rejects the CRD otherwise ("mutually exclusive").
    for path, node in nodes(schema):
        assert not ("properties" in node and "additionalProperties" in node), path


def test_no_unique_items(schema: dict[str, Any]) -> None:
    # Forbidden in structural schemas; uniqueness is list-type set/map (and checked by parse).
    for path, node in nodes(schema):
        assert "uniqueItems" not in node, path


def test_every_spec_and_status_field_is_described(schema: dict[str, Any]) -> None:
    undocumented = [
        path
        for path, node in nodes(schema)
        if path.startswith(("spec", "status"))
        and not node.get("description")
        and not path.endswith("{}")
    ]
    assert undocumented == []


def test_list_map_keys_are_required(schema: dict[str, Any]) -> None:
    for path, node in nodes(schema):
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", [])), path


def test_durations_use_the_model_pattern(schema: dict[str, Any]) -> None:
    durations = {
        path: node["pattern"]
        for path, node in nodes(schema)
        if path.rsplit(".", 1)[-1] in {"timeout", "perTryTimeout", "connectTimeout", "interval"}
        or path.endswith("baseEjectionTime")
    }
    assert len(durations) == 7
    assert set(durations.values()) == {DURATION_PATTERN}
    # and each is parsed by a CEL rule, so the API server refuses what Go cannot hold
    for path, node in nodes(schema):
        if path in durations:
            rules = [r["rule"] for r in node["x-kubernetes-validations"]]
            assert any(rule.startswith("duration(self)") for rule in rules), path
            assert node["maxLength"] <= 64, path  # bounds the rule's estimated cost


def test_enums_match_the_model(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    policy = spec["trafficPolicy"]["properties"]
    service_codes = policy["retries"]["properties"]["retryOn"]["items"]["enum"]
    method_retries = spec["methods"]["items"]["properties"]["retries"]["properties"]
    assert service_codes == [code.value for code in RetryOn]
    assert method_retries["retryOn"]["items"]["enum"] == service_codes
    assert policy["loadBalancer"]["enum"] == [lb.value for lb in LoadBalancer]


def test_method_retries_cannot_set_a_budget(schema: dict[str, Any]) -> None:
    # The budget is a cluster (per service) setting; a per-method one would be silently ignored.
    method = schema["properties"]["spec"]["properties"]["methods"]["items"]["properties"]
    assert "budget" not in method["retries"]["properties"]


def test_status_schema(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    assert {"conditions", "observedGeneration", "endpoints", "ackedVersion"} <= set(status)
    condition = status["conditions"]["items"]
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
