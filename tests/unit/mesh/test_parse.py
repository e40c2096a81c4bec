"""parse_mesh_service: accepts the reference resources, fills defaults, and rejects each class of
invalid document with one InvalidResource naming the source and the field path."""

from __future__ import annotations

from datetime import timedelta
from types import MappingProxyType
from typing import Any

import pytest

from grpcmesh_control.mesh.model import (
    Backend,
    EnvVar,
    ExternalHost,
    FieldError,
    InvalidResource,
    KeyRef,
    LoadBalancer,
    MethodCatalog,
    RetryOn,
    TrafficPolicy,
    VersionTarget,
    parse_mesh_service,
    parse_mesh_services_yaml,
)
from tests.unit.examples import EXAMPLE_NAMES, EXAMPLES, Mutation, set_field

Doc = dict[str, Any]
MINIMAL = """
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {name: echo}
spec:
  grpc: {port: 9000, services: [test.v1.Echo]}
"""


# --- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_examples_parse_with_the_catalog(name: str, catalog: MethodCatalog) -> None:
    text = (EXAMPLES / f"{name}.yaml").read_text()
    (svc,) = parse_mesh_services_yaml(text, source=f"{name}.yaml", catalog=catalog)
    assert svc.name == name
    assert svc.namespace == "default"
    assert sum(v.weight for v in svc.versions) == 100


def test_example_values(example_docs: dict[str, Doc], catalog: MethodCatalog) -> None:
    orders = parse_mesh_service(example_docs["orders"], catalog=catalog)
    assert orders.backends == (Backend("catalog"), Backend("inventory"), Backend("payments"))
    assert orders.grpc.services == ("grpcmesh.shop.v1.OrderService",)
    place = orders.method("grpcmesh.shop.v1.OrderService/PlaceOrder")
    assert place is not None and place.timeout == timedelta(seconds=10)
    assert place.retries is not None and place.retries.attempts == 1
    assert place.retries.retry_on is None  # inherited, not defaulted here
    assert orders.workload is not None and orders.workload.resources.limits.cpu == "1"

    payments = parse_mesh_service(example_docs["payments"], catalog=catalog)
    assert payments.versions == (
        VersionTarget("v1", 90),
        VersionTarget("v2", 10, image="ghcr.io/grpcmesh/grpcmesh-payments:0.2.0"),
    )
    assert payments.traffic_policy.retries.retry_on == (
        RetryOn.UNAVAILABLE,
        RetryOn.DEADLINE_EXCEEDED,
    )
    assert payments.config_map == {"failure_rate": "0.0"}

    catalog_svc = parse_mesh_service(example_docs["catalog"], catalog=catalog)
    assert catalog_svc.traffic_policy.retries.per_try_timeout == timedelta(milliseconds=300)
    outlier = catalog_svc.traffic_policy.outlier_detection
    assert outlier is not None
    assert (outlier.consecutive_gateway_failure, outlier.consecutive_5xx) == (5, None)
    assert outlier.max_ejection_percent == 50


def test_defaults_for_a_minimal_resource() -> None:
    (svc,) = parse_mesh_services_yaml(MINIMAL, source="echo.yaml")
    assert svc.namespace == "default"
    assert svc.replicas == 1
    assert svc.expose is False  # internal unless it asks to be routed at the ingress
    assert svc.proxyless is False  # calls go through the sidecar unless it asks
    assert svc.workload is None
    assert svc.versions == (VersionTarget("v1", 100),)
    assert svc.traffic_policy == TrafficPolicy()
    assert svc.traffic_policy.timeout == timedelta(seconds=15)
    assert svc.traffic_policy.load_balancer is LoadBalancer.LEAST_REQUEST
    assert svc.traffic_policy.retries.attempts == 2
    assert svc.traffic_policy.retries.retry_on == (RetryOn.UNAVAILABLE,)
    assert svc.traffic_policy.outlier_detection is None


def test_proxyless(example_docs: dict[str, Doc], catalog: MethodCatalog) -> None:
    doc = example_docs["orders"]
    doc["spec"]["proxyless"] = True
    assert parse_mesh_service(doc, catalog=catalog).proxyless is True
    doc["spec"]["proxyless"] = "yes"
    with pytest.raises(InvalidResource, match=r"spec\.proxyless: 'yes' is not of type 'boolean'"):
        parse_mesh_service(doc, source="orders.yaml")


def test_expose(example_docs: dict[str, Doc], catalog: MethodCatalog) -> None:
    assert parse_mesh_service(example_docs["orders"], catalog=catalog).expose is True
    doc = example_docs["inventory"]
    doc["spec"]["expose"] = "yes"
    with pytest.raises(InvalidResource, match=r"spec\.expose: 'yes' is not of type 'boolean'"):
        parse_mesh_service(doc, source="inventory.yaml")


def test_zero_timeout_means_no_deadline_not_the_default(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["catalog"]
    doc["spec"]["trafficPolicy"]["timeout"] = "0s"
    assert parse_mesh_service(doc).traffic_policy.timeout == timedelta(0)


def test_workload_version_names_the_single_version(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["catalog"]
    doc["spec"]["workload"]["version"] = "v7"
    assert parse_mesh_service(doc).versions == (VersionTarget("v7", 100),)


def test_env_value_from_and_external_backend(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["orders"]
    doc["spec"]["workload"]["env"] = [
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "fx", "key": "token"}}}
    ]
    doc["spec"]["backends"].append(
        {"name": "fx", "external": {"host": "fx.example.com", "port": 443, "tls": True}}
    )
    svc = parse_mesh_service(doc)
    assert svc.workload is not None
    assert svc.workload.env[0].secret_key_ref == KeyRef("fx", "token")
    assert svc.backends[-1] == Backend("fx", ExternalHost("fx.example.com", 443, tls=True))


def test_versions_may_change_image_command_args_and_env(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["payments"]
    doc["spec"]["versions"][1] |= {
        "command": ["python", "-m", "next"],
        "args": ["--fast"],
        "env": [{"name": "FEATURE", "value": "on"}],
    }
    svc = parse_mesh_service(doc)
    stable, canary = (svc.workload_of(v) for v in svc.versions)
    assert stable == svc.workload  # nothing set: the workload as written
    assert canary is not None and svc.workload is not None
    assert canary.image.endswith(":0.2.0")
    assert (canary.command, canary.args) == (("python", "-m", "next"), ("--fast",))
    assert canary.env == (*svc.workload.env, EnvVar("FEATURE", value="on"))


def test_status_is_ignored(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["catalog"]
    doc["status"] = {"kopf": {"progress": {}}, "anything": 1}
    assert parse_mesh_service(doc).name == "catalog"


def test_read_only_mappings_validate(example_docs: dict[str, Doc]) -> None:
    # kopf hands handlers read-only Mapping views, not dicts.
    doc = example_docs["orders"]
    view = MappingProxyType({**doc, "spec": MappingProxyType(doc["spec"])})
    assert parse_mesh_service(view).name == "orders"


def test_object_meta_beyond_the_name_is_left_to_the_api_server(
    example_docs: dict[str, Doc],
) -> None:
    # The CRD constrains metadata.name only; the strict schema must not close metadata.
    doc = example_docs["catalog"]
    doc["metadata"] |= {"labels": {"team": "shop"}, "annotations": {"a": "b"}, "uid": "1"}
    assert parse_mesh_service(doc).name == "catalog"


def test_generation_is_kept(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["catalog"]
    doc["metadata"]["generation"] = 4
    assert parse_mesh_service(doc).generation == 4


def test_methods_are_checked_against_the_catalog_only_when_it_knows_the_service() -> None:
    doc_text = MINIMAL + "  methods: [{name: test.v1.Echo/Anything, timeout: 1s}]\n"
    parse_mesh_services_yaml(doc_text, source="no-catalog")
    parse_mesh_services_yaml(doc_text, source="other-catalog", catalog=MethodCatalog())


# --- rejected: one case per class, each naming the field ---------------------------------------


def _delete(path: str) -> Mutation:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


INVALID: list[tuple[str, str, Mutation, str]] = [
    # (id, example, mutation, expected "path: reason" fragment)
    (
        "minimum",
        "orders",
        set_field("spec.trafficPolicy.retries.attempts", -1),
        "spec.trafficPolicy.retries.attempts: -1 is less than the minimum of 0",
    ),
    (
        "maximum",
        "orders",
        set_field("spec.grpc.port", 70000),
        "spec.grpc.port: 70000 is greater than",
    ),
    (
        "unknown-field",
        "orders",
        set_field("spec.trafficPolicy.retry", {"attempts": 1}),
        "spec.trafficPolicy.retry: unknown field",
    ),
    (
        "unknown-field-typo",
        "orders",
        set_field("spec.trafficPolicy.retries.perTryTimout", "1s"),
        "spec.trafficPolicy.retries.perTryTimout: unknown field (did you mean perTryTimeout?)",
    ),
    (
        "unknown-field-case",
        "orders",
        set_field("spec.trafficPolicy.loadbalancer", "RANDOM"),
        "spec.trafficPolicy.loadbalancer: unknown field (did you mean loadBalancer?)",
    ),
    (
        "unknown-field-in-a-list-item",
        "payments",
        set_field("spec.versions.1.replica", 2),
        "spec.versions[1].replica: unknown field (did you mean replicas?)",
    ),
    (
        "unknown-nested-field",
        "catalog",
        set_field("spec.trafficPolicy.outlierDetection.consecutiveErrors", 5),
        "spec.trafficPolicy.outlierDetection.consecutiveErrors: unknown field",
    ),
    ("missing", "orders", _delete("spec.grpc.port"), "spec.grpc.port: required field is missing"),
    ("missing-spec", "orders", _delete("spec"), "spec: required field is missing"),
    (
        "type",
        "orders",
        set_field("spec.replicas", "two"),
        "spec.replicas: 'two' is not of type 'integer'",
    ),
    (
        "workers",
        "orders",
        set_field("spec.workload.workers", 0),
        "spec.workload.workers: 0 is less than the minimum of 1",
    ),
    (
        "duration",
        "orders",
        set_field("spec.trafficPolicy.timeout", "2 seconds"),
        "spec.trafficPolicy.timeout: '2 seconds' is not a duration",
    ),
    (
        "enum",
        "orders",
        set_field("spec.trafficPolicy.retries.retryOn", ["NOT_FOUND"]),
        "spec.trafficPolicy.retries.retryOn[0]: 'NOT_FOUND' is not one of",
    ),
    (
        "list-item",
        "orders",
        set_field("spec.backends", [{"name": "Catalog"}]),
        "spec.backends[0].name: 'Catalog' does not match",
    ),
    (
        "external-port",
        "orders",
        set_field("spec.backends", [{"name": "fx", "external": {"host": "fx.example.com"}}]),
        "spec.backends[0].external.port: required field is missing",
    ),
    (
        "config-value-type",
        "payments",
        set_field("spec.config.failure_rate", 0.0),
        "spec.config.failure_rate: 0.0 is not of type 'string'",
    ),
    (
        "config-key",
        "payments",
        set_field("spec.config.bad key", "x"),
        "spec.config.bad key: not a valid ConfigMap key",
    ),
    (
        "weights",
        "payments",
        set_field("spec.versions.1.weight", 5),
        "spec.versions: weights sum to 95, must be 100",
    ),
    (
        "duplicate-versions",
        "payments",
        set_field("spec.versions.1.name", "v1"),
        "spec.versions[1]: duplicate of spec.versions[0] ('v1')",
    ),
    (
        "version-twice",
        "payments",
        set_field("spec.workload.version", "v1"),
        "spec.workload.version: must not be set together with spec.versions",
    ),
    (
        "duplicate-backends",
        "orders",
        set_field("spec.backends", [{"name": "catalog"}, {"name": "catalog"}]),
        "spec.backends[1]: duplicate of spec.backends[0] ('catalog')",
    ),
    (
        "duplicate-services",
        "orders",
        set_field("spec.grpc.services", ["a.B", "a.B"]),
        "spec.grpc.services[1]: duplicate of spec.grpc.services[0] ('a.B')",
    ),
    (
        "method-format",
        "orders",
        set_field("spec.methods", [{"name": "PlaceOrder"}]),
        "spec.methods[0].name: 'PlaceOrder' does not match",
    ),
    (
        "method-service",
        "orders",
        set_field("spec.methods", [{"name": "grpcmesh.shop.v1.PaymentService/Charge"}]),
        "spec.methods[0].name: service grpcmesh.shop.v1.PaymentService is not one of "
        "spec.grpc.services",
    ),
    (
        "method-not-in-catalog",
        "inventory",
        set_field("spec.methods", [{"name": "grpcmesh.shop.v1.InventoryService/Teleport"}]),
        "spec.methods[0].name: grpcmesh.shop.v1.InventoryService has no method Teleport (it has: "
        "AdjustStock, CommitStock",
    ),
    (
        "env-value-and-value-from",
        "inventory",
        set_field(
            "spec.workload.env",
            [{"name": "X", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        ),
        "spec.workload.env[0]: set exactly one of value and valueFrom",
    ),
    (
        "env-neither",
        "inventory",
        set_field("spec.workload.env", [{"name": "X"}]),
        "spec.workload.env[0]: set exactly one of value and valueFrom",
    ),
    (
        "zero-connect-timeout",
        "orders",
        set_field("spec.trafficPolicy.connectTimeout", "0s"),
        "spec.trafficPolicy.connectTimeout: '0s' must be greater than zero",
    ),
    (
        "name",
        "orders",
        set_field("metadata.name", "Orders_1"),
        "metadata.name: 'Orders_1' is not a DNS-1035 label",
    ),
    (
        "name-length",
        "orders",
        set_field("metadata.name", "o" * 64),
        "metadata.name: '" + "o" * 64 + "' is too long",
    ),
    (
        "duration-beyond-go",
        "orders",
        set_field("spec.methods.0.timeout", "2562048h"),
        "spec.methods[0].timeout: '2562048h' is longer than 2562047h47m16.854775807s",
    ),
    (
        "api-version",
        "orders",
        set_field("apiVersion", "grpcmesh.io/v1"),
        "apiVersion: must be grpcmesh.io/v1alpha1, not 'grpcmesh.io/v1'",
    ),
    ("kind", "orders", set_field("kind", "Service"), "kind: must be MeshService, not 'Service'"),
    (
        "version-env-twice",
        "payments",
        set_field(
            "spec.versions.1.env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
        ),
        "spec.versions[1].env[1]: duplicate of spec.versions[1].env[0] ('A')",
    ),
    (
        "version-env-value-and-value-from",
        "payments",
        set_field(
            "spec.versions.0.env",
            [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        ),
        "spec.versions[0].env[0]: set exactly one of value and valueFrom",
    ),
    (
        "version-command-not-a-list",
        "payments",
        set_field("spec.versions.1.command", "python -m x"),
        "spec.versions[1].command: 'python -m x' is not of type 'array'",
    ),
]


@pytest.mark.parametrize(
    ("example", "mutate", "expected"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_rejects_with_field_path(
    example: str,
    mutate: Mutation,
    expected: str,
    example_docs: dict[str, Doc],
    catalog: MethodCatalog,
) -> None:
    doc = example_docs[example]
    mutate(doc)
    with pytest.raises(InvalidResource) as caught:
        parse_mesh_service(doc, source=f"manifests/examples/{example}.yaml", catalog=catalog)
    message = str(caught.value)
    assert message.startswith(f"manifests/examples/{example}.yaml (MeshService default/")
    assert expected in message


def test_an_unknown_field_with_nothing_close_gets_no_guess(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["orders"]
    doc["spec"]["colour"] = "blue"
    with pytest.raises(InvalidResource) as caught:
        parse_mesh_service(doc)
    assert [str(e) for e in caught.value.errors] == ["spec.colour: unknown field"]


def test_message_names_source_resource_and_path(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["orders"]
    doc["spec"]["trafficPolicy"]["retries"]["attempts"] = -1
    with pytest.raises(InvalidResource) as caught:
        parse_mesh_service(doc, source="orders.yaml")
    assert str(caught.value) == (
        "orders.yaml (MeshService default/orders): "
        "spec.trafficPolicy.retries.attempts: -1 is less than the minimum of 0"
    )
    assert caught.value.errors == (
        FieldError("spec.trafficPolicy.retries.attempts", "-1 is less than the minimum of 0"),
    )


def test_without_a_source_the_resource_is_named(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["orders"]
    doc["spec"]["replicas"] = -3
    with pytest.raises(InvalidResource, match=r"^MeshService default/orders: spec\.replicas"):
        parse_mesh_service(doc)


def test_every_problem_is_reported_at_once(example_docs: dict[str, Doc]) -> None:
    doc = example_docs["orders"]
    doc["spec"]["replicas"] = -1
    doc["spec"]["grpc"]["port"] = 0
    doc["spec"]["surprise"] = True
    with pytest.raises(InvalidResource) as caught:
        parse_mesh_service(doc)
    assert [e.path for e in caught.value.errors] == [
        "spec.grpc.port",
        "spec.replicas",
        "spec.surprise",
    ]


def test_not_a_mapping() -> None:
    with pytest.raises(
        InvalidResource, match=r"^x\.yaml: a MeshService document must be a mapping"
    ):
        parse_mesh_service(["not", "a", "mapping"], source="x.yaml")


def test_invalid_yaml_names_the_source() -> None:
    with pytest.raises(InvalidResource, match=r"^broken\.yaml: not valid YAML"):
        parse_mesh_services_yaml("spec: [unclosed", source="broken.yaml")


def test_multi_document_yaml() -> None:
    text = MINIMAL + "---\n" + MINIMAL.replace("name: echo", "name: echo2") + "---\n"
    assert [s.name for s in parse_mesh_services_yaml(text, source="two.yaml")] == ["echo", "echo2"]
