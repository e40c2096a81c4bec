"""The API server refuses a bad MeshService on its own, naming the field, with no operator.

No operator runs in this tier's cluster (the ``kube`` fixture installs the CRDs and nothing
else), so no validating webhook is registered: every refusal here comes from the CRD alone
(its schema and its CEL ``x-kubernetes-validations``), exactly what a user gets from
``kubectl apply`` while the operator is scaled to zero or not installed yet.

Each case is one plain ``kubectl apply`` (client-side, as a user types it) of an example with
one thing wrong. The same cases hold local mode to the same answers: the model's parser (or,
for the two rules only a deployed workload needs, the admission validator) refuses each
document naming the same field, and every CEL rule in the CRD is exercised by a case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from grpcmesh_control.cluster.objects.admission import validate_admission
from grpcmesh_control.mesh.appenv import RESERVED
from grpcmesh_control.mesh.errors import InvalidResource
from grpcmesh_control.mesh.model import parse_mesh_service
from grpcmesh_control.mesh.model.durations import MAX_DURATION
from grpcmesh_control.mesh.model.schema import load_crd, openapi_schema
from tests.chart.chart import VALUE_SETS, find, render
from tests.cluster.kube import KubeCluster, KubectlError
from tests.kube_schemas import schema_nodes
from tests.unit.examples import EXAMPLE_NAMES, EXAMPLES, Mutation, example_doc, set_field

Doc = dict[str, Any]
TOO_LONG = "2562047h47m16.854775808s"  # one nanosecond over MAX_DURATION


@dataclass(frozen=True)
class Refusal:
    """An example with one thing wrong, and the field a refusal must name."""

    id: str
    example: str
    edits: tuple[Mutation, ...]
    field: str
    says: str
    """What the API server says about it (a fragment)."""
    rule: tuple[str, int] | None = None
    """The CEL rule it trips: (schema location, index), ``[]`` marking list items."""
    local: str = "model"
    """Which local check refuses it too: ``model`` (local mode) or ``admission`` only."""
    enclosing: str | None = None
    """The list or map the API server names instead, where a rule must sit above the entry
    it checks (a CEL rule sees no parent); the local checks name the entry itself."""

    @property
    def cluster_field(self) -> str:
        return self.enclosing or self.field

    def document(self) -> Doc:
        doc = example_doc(self.example)
        for edit in self.edits:
            edit(doc)
        return doc


def _case(
    id: str,
    example: str,
    edits: Mutation | tuple[Mutation, ...],
    field: str,
    says: str,
    rule: tuple[str, int] | str | None = None,
    local: str = "model",
    enclosing: str | None = None,
) -> Refusal:
    edits = edits if isinstance(edits, tuple) else (edits,)
    location = (rule, 0) if isinstance(rule, str) else rule
    return Refusal(id, example, edits, field, says, location, local, enclosing)


_ENV_VALUE = {"name": "LEVEL", "value": "INFO"}
_SECRET = {"secretKeyRef": {"name": "s", "key": "k"}}
_CONFIG_MAP = {"configMapKeyRef": {"name": "c", "key": "k"}}
_ORDERS = "grpcmesh.shop.v1.OrderService"

CASES = (
    # CEL rules
    _case(
        "weights",
        "payments",
        set_field("spec.versions.1.weight", 5),
        "spec.versions",
        "weights sum to less than 100, must be 100",
        "spec.versions",
    ),
    _case(
        "weights-over",
        "payments",
        set_field("spec.versions.1.weight", 11),
        "spec.versions",
        "weights sum to more than 100, must be 100",
        "spec.versions",
    ),
    _case(
        "version-with-versions",
        "payments",
        set_field("spec.workload.version", "v1"),
        "spec.workload.version",
        "Forbidden: must not be set together with spec.versions",
        ("spec", 0),
    ),
    _case(
        "method-of-another-service",
        "inventory",
        set_field("spec.methods.1.name", "grpcmesh.shop.v1.PaymentService/Charge"),
        "spec.methods[1].name",
        "each method's service (the part before the /) must be one of spec.grpc.services",
        ("spec", 1),
        enclosing="spec.methods",
    ),
    _case(
        "authorization-of-another-service",
        "payments",
        set_field(
            "spec.authorization",
            {"rules": [{"from": {"services": ["orders"]}, "to": [{"service": _ORDERS}]}]},
        ),
        "spec.authorization.rules[0].to[0].service",
        "each rule's to[].service must be one of spec.grpc.services",
        ("spec", 2),
        enclosing="spec.authorization.rules",
    ),
    _case(
        "authorization-from-nobody",
        "payments",
        set_field("spec.authorization", {"rules": [{"from": {"ingress": False}}]}),
        "spec.authorization.rules[0].from",
        "each rule's from must name services, namespaces or the ingress",
        "spec.authorization.rules",
        enclosing="spec.authorization.rules",
    ),
    _case(
        "env-value-and-value-from",
        "inventory",
        set_field("spec.workload.env", [{**_ENV_VALUE, "valueFrom": _SECRET}]),
        "spec.workload.env[0]",
        "set exactly one of value and valueFrom",
        "spec.workload.env[]",
    ),
    _case(
        "env-neither-value",
        "inventory",
        set_field("spec.workload.env", [_ENV_VALUE, {"name": "EMPTY"}]),
        "spec.workload.env[1]",
        "set exactly one of value and valueFrom",
        "spec.workload.env[]",
    ),
    _case(
        "env-two-sources",
        "inventory",
        set_field("spec.workload.env", [{"name": "KEY", "valueFrom": _SECRET | _CONFIG_MAP}]),
        "spec.workload.env[0].valueFrom",
        "set exactly one of secretKeyRef and configMapKeyRef",
        "spec.workload.env[].valueFrom",
    ),
    _case(
        "env-owned-by-the-operator",
        "inventory",
        set_field("spec.workload.env.0.name", "GRPCMESH_PORT"),
        "spec.workload.env[0].name",
        "Forbidden: GRPCMESH_PORT is set by the operator",
        "spec.workload.env[].name",
        local="admission",
    ),
    _case(
        "version-env-value-and-value-from",
        "payments",
        set_field("spec.versions.1.env", [{**_ENV_VALUE, "valueFrom": _SECRET}]),
        "spec.versions[1].env[0]",
        "set exactly one of value and valueFrom",
        "spec.versions[].env[]",
    ),
    _case(
        "version-env-two-sources",
        "payments",
        set_field("spec.versions.0.env", [{"name": "KEY", "valueFrom": _SECRET | _CONFIG_MAP}]),
        "spec.versions[0].env[0].valueFrom",
        "set exactly one of secretKeyRef and configMapKeyRef",
        "spec.versions[].env[].valueFrom",
    ),
    _case(
        "version-env-owned-by-the-mesh",
        "payments",
        set_field("spec.versions.1.env", [{"name": "GRPCMESH_VERSION", "value": "v9"}]),
        "spec.versions[1].env[0].name",
        "Forbidden: GRPCMESH_VERSION is set by the operator",
        "spec.versions[].env[].name",
        local="admission",
    ),
    _case(
        "cpu-over-limit",
        "orders",
        set_field("spec.workload.resources.limits.cpu", "50m"),
        "spec.workload.resources.requests.cpu",
        "100m exceeds limits.cpu 50m",
        ("spec.workload.resources", 0),
        local="admission",
    ),
    _case(
        "memory-over-limit",
        "orders",
        set_field("spec.workload.resources.limits.memory", "64Mi"),
        "spec.workload.resources.requests.memory",
        "128Mi exceeds limits.memory 64Mi",
        ("spec.workload.resources", 1),
        local="admission",
    ),
    _case(
        "zero-connect-timeout",
        "orders",
        set_field("spec.trafficPolicy.connectTimeout", "0s"),
        "spec.trafficPolicy.connectTimeout",
        "must be greater than zero",
        "spec.trafficPolicy.connectTimeout",
    ),
    _case(
        "zero-ejection-interval",
        "orders",
        set_field("spec.trafficPolicy.outlierDetection.interval", "0ms"),
        "spec.trafficPolicy.outlierDetection.interval",
        "must be greater than zero",
        "spec.trafficPolicy.outlierDetection.interval",
    ),
    _case(
        "zero-ejection-time",
        "orders",
        set_field("spec.trafficPolicy.outlierDetection.baseEjectionTime", "0.0s"),
        "spec.trafficPolicy.outlierDetection.baseEjectionTime",
        "must be greater than zero",
        "spec.trafficPolicy.outlierDetection.baseEjectionTime",
    ),
    *(
        _case(
            f"duration-beyond-go-{path.replace('.', '-').lower()}",
            "orders",
            set_field(path, TOO_LONG),
            re.sub(r"\.(\d+)", r"[\1]", path),
            "google.protobuf.Duration",
            re.sub(r"\.\d+", "[]", path),
        )
        for path in [
            "spec.trafficPolicy.timeout",
            "spec.trafficPolicy.retries.perTryTimeout",
            "spec.methods.0.timeout",
            "spec.methods.0.retries.perTryTimeout",
        ]
    ),
    *(
        _case(
            f"duration-beyond-go-{path.replace('.', '-').lower()}",
            "orders",
            (set_field(path, TOO_LONG), set_field(path.replace("fixedDelay", "percentage"), 10)),
            re.sub(r"\.(\d+)", r"[\1]", path),
            "google.protobuf.Duration",
            re.sub(r"\.\d+", "[]", path),
        )
        for path in [
            "spec.trafficPolicy.fault.delay.fixedDelay",
            "spec.methods.0.fault.delay.fixedDelay",
        ]
    ),
    _case(
        "config-key",
        "payments",
        set_field("spec.config.bad key", "x"),
        "spec.config.bad key",
        "keys must be ConfigMap keys",
        "spec.config",
        enclosing="spec.config",
    ),
    _case(
        "name-not-a-dns-label",
        "payments",
        set_field("metadata.name", "payments.v2"),
        "metadata.name",
        "is not a DNS-1035 label",
        "metadata.name",
    ),
    # The schema itself: unique names (list types), bounds
    *(
        _case(f"duplicate-{what}", example, edit, field, "Duplicate value")
        for what, example, edit, field in [
            ("version", "payments", set_field("spec.versions.1.name", "v1"), "spec.versions[1]"),
            (
                "service",
                "orders",
                set_field("spec.grpc.services", [_ORDERS, "a.B", _ORDERS]),
                "spec.grpc.services[2]",
            ),
            (
                "method",
                "inventory",
                set_field("spec.methods.1.name", "grpcmesh.shop.v1.InventoryService/ReserveStock"),
                "spec.methods[1]",
            ),
            ("backend", "orders", set_field("spec.backends.2.name", "catalog"), "spec.backends[2]"),
            (
                "env",
                "inventory",
                set_field("spec.workload.env", [_ENV_VALUE, _ENV_VALUE]),
                "spec.workload.env[1]",
            ),
        ]
    ),
    _case(
        "duration-format",
        "orders",
        set_field("spec.trafficPolicy.timeout", "2 seconds"),
        "spec.trafficPolicy.timeout",
        "should match",
    ),
    _case(
        "duration-length",
        "orders",
        set_field("spec.trafficPolicy.timeout", "1s" * 17),
        "spec.trafficPolicy.timeout",
        "Too long",
    ),
    _case(
        "workers-over",
        "orders",
        set_field("spec.workload.workers", 65),
        "spec.workload.workers",
        "less than or equal to 64",
    ),
    _case(
        "name-length",
        "payments",
        set_field("metadata.name", "p" * 64),
        "metadata.name",
        "Too long",
    ),
)


def _ids(cases: tuple[Refusal, ...]) -> list[str]:
    return [case.id for case in cases]


# --- the API server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusals_namespace(kube: KubeCluster) -> Iterator[str]:
    """One namespace for every refusal case: a refused object is never stored, so they cannot
    disturb each other, and a namespace per case would cost more than the case."""
    name = kube.create_namespace("crd-refusals")
    yield name
    assert kube.items("meshservices", name) == [], "a refused MeshService was stored"
    kube.kubectl("delete", "namespace", name, "--wait=false")


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_the_api_server_refuses_naming_the_field(
    kube: KubeCluster, refusals_namespace: str, case: Refusal
) -> None:
    with pytest.raises(KubectlError) as refused:
        kube.apply([case.document()], namespace=refusals_namespace, server_side=False)
    assert case.cluster_field in refused.value.fields, refused.value.stderr
    assert case.says in refused.value.stderr


def test_with_the_webhook_registered_and_no_operator_the_crd_still_names_the_field(
    kube: KubeCluster, namespace: str
) -> None:
    """The chart's state with the operator scaled to zero: its ValidatingWebhookConfiguration
    (failurePolicy Fail) points at its control Service, which has no endpoints. A bad
    MeshService still gets the CRD's refusal naming the field, not a webhook error: the API
    server validates the object before it calls validating webhooks."""
    release = kube.create_namespace(f"{namespace}-release")
    objects = render({}, namespace=release)
    (webhooks,) = find(objects, "ValidatingWebhookConfiguration")
    webhooks["metadata"]["name"] = f"{namespace}-meshservices"
    for webhook in webhooks["webhooks"]:  # this test's namespace only: others run meanwhile
        webhook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    try:
        kube.apply([*find(objects, "Service", "grpcmesh-control"), webhooks])
        with pytest.raises(KubectlError) as unreachable:
            kube.apply([example_doc("catalog")], namespace=namespace, server_side=False)
        assert "meshservices.webhooks.grpcmesh.io" in unreachable.value.stderr
        weights = next(case for case in CASES if case.id == "weights")
        with pytest.raises(KubectlError) as refused:
            kube.apply([weights.document()], namespace=namespace, server_side=False)
        assert refused.value.fields == {"spec.versions"}, refused.value.stderr
        assert "webhook" not in refused.value.stderr
    finally:
        kube.kubectl("delete", "validatingwebhookconfiguration", webhooks["metadata"]["name"])
        kube.kubectl("delete", "namespace", release, "--wait=false")


def test_every_example_and_chart_meshservice_is_accepted(kube: KubeCluster, namespace: str) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    names = {item["metadata"]["name"] for item in kube.items("meshservices", namespace)}
    assert names == set(EXAMPLE_NAMES)

    charted = {
        yaml.safe_dump(obj): obj
        for _, values in VALUE_SETS
        for obj in find(render(values), "MeshService")
    }
    assert charted, "the chart renders no MeshService in any value set"
    chart_namespace = kube.create_namespace(f"{namespace}-chart")
    try:
        for obj in charted.values():
            obj["metadata"]["namespace"] = chart_namespace
        kube.apply(charted.values())
        stored = {i["metadata"]["name"] for i in kube.items("meshservices", chart_namespace)}
        assert stored == {obj["metadata"]["name"] for obj in charted.values()}
    finally:
        kube.kubectl("delete", "namespace", chart_namespace, "--wait=false")


def test_the_edges_of_each_rule_are_accepted(kube: KubeCluster, namespace: str) -> None:
    """Just inside every bound: accepted by the API server and the local checks alike."""
    doc = _edge_document()
    parse_mesh_service(doc)
    assert _admission(doc)["allowed"] is True
    kube.apply([doc], namespace=namespace, server_side=False)
    stored = kube.get("meshservice", doc["metadata"]["name"], namespace)
    assert stored["spec"]["trafficPolicy"]["timeout"] == MAX_DURATION


def _edge_document() -> Doc:
    doc = example_doc("payments")
    edits = [
        set_field("metadata.name", "p" + "-" * 61 + "9"),
        set_field("spec.versions", [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}]),
        set_field("spec.trafficPolicy.timeout", MAX_DURATION),
        set_field("spec.trafficPolicy.connectTimeout", "0.0001ms"),  # 100ns: still positive
        set_field("spec.trafficPolicy.outlierDetection.interval", "1ms"),
        set_field("spec.config", {"k" * 253: "x", "-._": "1"}),
        set_field(
            "spec.workload.resources",
            {"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"cpu": "1000m", "memory": "1Gi"}},
        ),
        set_field(
            "spec.workload.env",
            [
                {"name": "GRPCMESH_LOG_LEVEL", "value": "INFO"},
                {"name": "FROM_SECRET", "valueFrom": _SECRET},
            ],
        ),
    ]
    for edit in edits:
        edit(doc)
    return doc


def test_a_mesh_service_at_every_size_bound_stays_within_the_cel_cost_limit(
    kube: KubeCluster, namespace: str
) -> None:
    """Every list at maxItems and string at maxLength where a rule reads them: the API
    server evaluates every rule within its runtime cost limit (the estimate let the CRD in;
    this is the actual cost). ``create``, as ``apply`` would also store a 256 KiB copy in
    an annotation, past the annotation limit."""
    doc = _largest_document()
    parse_mesh_service(doc)
    kube.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(doc))
    assert kube.get("meshservice", "largest", namespace) is not None


def _largest_document() -> Doc:
    services = [f"{'s' * 240}.S{i:03d}" for i in range(32)]  # 245 of 253 characters
    method_prefix = f"{services[-1]}/M"
    methods = [
        {
            "name": f"{method_prefix}{'m' * (509 - len(method_prefix))}{i:03d}",  # 512
            "timeout": "1h1m1s1ms0.5s1h1m1s1ms0.5s1h1m1s",  # 32
            "retries": {"perTryTimeout": "1h1m1s1ms0.5s1h1m1s1ms0.5s1h1m1s"},
        }
        for i in range(256)
    ]
    return {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": "largest"},
        "spec": {
            "grpc": {"port": 50051, "services": services},
            "versions": [{"name": f"v{i}", "weight": 100 if i == 0 else 0} for i in range(8)],
            "methods": methods,
            "config": {f"{i:03d}{'k' * 250}": "x" for i in range(256)},
            "authorization": {
                "rules": [
                    {
                        "from": {
                            "services": [f"{'n' * 60}{i:03d}/{'s' * 60}{i:03d}"],
                            "namespaces": [f"{'n' * 60}{i:03d}"],
                            "ingress": True,
                        },
                        "to": [
                            # The rule checking to[].service walks every rule's list at its
                            # bound; the other lists there cost the rules nothing.
                            {"service": services[j], "methods": ["M" * 128]}
                            for j in range(32)
                        ],
                    }
                    for i in range(32)
                ]
            },
            "workload": {
                "image": "app",
                "env": [{"name": f"E{i:03d}{'e' * 249}", "value": "v"} for i in range(128)],
                "resources": {
                    "requests": {"cpu": "1" * 63, "memory": "1" * 63},
                    "limits": {"cpu": "1" * 64, "memory": "1" * 64},
                },
            },
            "trafficPolicy": {
                "timeout": "1h1m1s1ms0.5s1h1m1s1ms0.5s1h1m1s",
                "connectTimeout": "1h1m1s1ms0.5s1h1m1s1ms0.5s1h1m1s",
            },
        },
    }


# --- local mode agrees ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_the_local_checks_refuse_the_same_field(case: Refusal) -> None:
    doc = case.document()
    response = _admission(doc)
    assert response["allowed"] is False
    assert case.field in {c["field"] for c in response["status"]["details"]["causes"]}
    if case.local == "model":
        with pytest.raises(InvalidResource) as refused:
            parse_mesh_service(doc)
        assert case.field in {e.path for e in refused.value.errors}
    else:
        parse_mesh_service(doc)  # a rule of deployed workloads only; local mode runs none


def _admission(doc: Doc) -> dict[str, Any]:
    """The validating webhook's answer for ``doc`` alone in the mesh."""
    review = {"request": {"uid": "u", "operation": "CREATE", "namespace": "shop", "object": doc}}
    response: dict[str, Any] = validate_admission(review, known_services=(), catalog=None)[
        "response"
    ]
    return response


def test_every_cel_rule_has_a_case() -> None:
    rules = set(_cel_rules(openapi_schema(load_crd())))
    exercised = {case.rule for case in CASES if case.rule is not None}
    assert exercised == rules


def test_the_meshs_variables_are_the_ones_the_crd_forbids() -> None:
    spec = openapi_schema(load_crd())["properties"]["spec"]["properties"]
    workload_env = spec["workload"]["properties"]["env"]
    version_env = spec["versions"]["items"]["properties"]["env"]
    for env in (workload_env, version_env):
        (rule,) = env["items"]["properties"]["name"]["x-kubernetes-validations"]
        assert set(re.findall(r"'([A-Z_]+)'", rule["rule"])) == RESERVED


def _cel_rules(schema: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    for path, node in schema_nodes(schema):
        for i, _ in enumerate(node.get("x-kubernetes-validations", [])):
            yield path, i
