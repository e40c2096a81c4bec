"""The admission webhooks: MeshService validation (each class of invalid resource is denied
with a message naming the field) and sidecar injection into labelled pods."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from grpcmesh_control.cluster.objects import (
    MissingBackends,
    OperatorSettings,
    Provider,
    mutate_pod,
    read_only_root_violations,
    restricted_violations,
    validate_admission,
)
from grpcmesh_control.cluster.objects.names import BOOTSTRAP_VOLUME, PROXY_CONTAINER
from grpcmesh_control.cluster.objects.settings import XdsCredential
from grpcmesh_control.mesh.model import MeshService, MethodCatalog, parse_mesh_service

from .checks import apply_review_patch, validate_builtin

UID = "705ab4f5-6393-11e8-b7cc-42010a800002"


def review(obj: Any, *, operation: str = "CREATE", kind: str = "MeshService") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "grpcmesh.io", "version": "v1alpha1", "kind": kind},
            "operation": operation,
            "namespace": "default",
            "object": obj,
        },
    }


def validate(
    doc: Any,
    known: dict[str, MeshService],
    catalog: MethodCatalog,
    **kwargs: Any,
) -> dict[str, Any]:
    answer = validate_admission(
        review(doc), known_services=known.values(), catalog=catalog, **kwargs
    )
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response: dict[str, Any] = answer["response"]
    assert response["uid"] == UID
    return response


def denied_fields(response: dict[str, Any]) -> list[str]:
    assert response["allowed"] is False
    status = response["status"]
    assert (status["code"], status["reason"], status["status"]) == (422, "Invalid", "Failure")
    causes = status["details"]["causes"]
    for cause in causes:  # every cause is also in the message kubectl shows
        assert f"{cause['field']}: {cause['message']}" in status["message"]
    return [c["field"] for c in causes]


def test_the_examples_are_accepted(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    for doc in example_docs.values():
        response = validate(doc, services, catalog)
        assert response == {"allowed": True, "uid": UID}


def test_an_update_is_not_a_conflict_with_itself(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["payments"]
    doc["metadata"] |= {"uid": "x", "resourceVersion": "7", "generation": 3}
    answer = validate_admission(
        review(doc, operation="UPDATE"), known_services=services.values(), catalog=catalog
    )
    assert answer["response"]["allowed"] is True


def test_namespace_comes_from_the_request_when_the_object_lacks_it(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["orders"]
    assert "namespace" not in doc["metadata"]  # the examples apply into any namespace
    others = {k: v for k, v in services.items() if k != "orders"}
    assert validate(doc, others, catalog)["allowed"] is True


def test_schema_errors_name_the_field(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["orders"]
    doc["spec"]["trafficPolicy"]["retries"]["attempts"] = -1
    doc["spec"]["replicas"] = "two"
    response = validate(doc, services, catalog)
    assert denied_fields(response) == ["spec.replicas", "spec.trafficPolicy.retries.attempts"]
    assert response["status"]["details"]["kind"] == "MeshService"


def test_weights_must_sum_to_100(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["payments"]["spec"]["versions"][1]["weight"] = 20
    response = validate(example_docs["payments"], services, catalog)
    assert denied_fields(response) == ["spec.versions"]
    assert "weights sum to 110, must be 100" in response["status"]["message"]


def test_methods_must_exist(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["orders"]["spec"]["methods"][0]["name"] = "grpcmesh.shop.v1.OrderService/Nope"
    response = validate(example_docs["orders"], services, catalog)
    assert denied_fields(response) == ["spec.methods[0].name"]
    assert "has no method Nope" in response["status"]["message"]


def test_backends_must_exist_when_the_operator_denies_missing_ones(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["orders"]["spec"]["backends"].append({"name": "shipping"})
    response = validate(
        example_docs["orders"], services, catalog, missing_backends=MissingBackends.DENY
    )
    assert denied_fields(response) == ["spec.backends[3].name"]
    assert "no MeshService shipping" in response["status"]["message"]


def test_missing_backends_only_warn_by_default(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    # kubectl apply -f dir/ sends orders before payments: a warning lets it through.
    others = {k: v for k, v in services.items() if k not in ("orders", "payments")}
    response = validate(example_docs["orders"], others, catalog)
    assert response["allowed"] is True
    (warning,) = response["warnings"]
    assert warning.startswith("spec.backends[2].name: no MeshService payments")


def test_external_backends_need_no_mesh_service(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["orders"]["spec"]["backends"].append(
        {"name": "fx", "external": {"host": "fx.example.com", "port": 443, "tls": True}}
    )
    assert validate(example_docs["orders"], services, catalog)["allowed"] is True


def test_an_external_backend_may_not_shadow_a_mesh_service(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["orders"]["spec"]["backends"][0] = {
        "name": "catalog",
        "external": {"host": "catalog.example.com", "port": 443},
    }
    response = validate(example_docs["orders"], services, catalog)
    assert denied_fields(response) == ["spec.backends[0].name"]
    assert "ambiguous" in response["status"]["message"]


def test_a_grpc_service_is_served_once(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["catalog"]
    doc["metadata"]["name"] = "catalog-copy"
    response = validate(doc, services, catalog)
    assert denied_fields(response) == ["spec.grpc.services[0]"]
    assert "already served by MeshService default/catalog" in response["status"]["message"]


def test_names_are_unique_across_namespaces(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["payments"]
    doc["metadata"]["namespace"] = "staging"
    doc["spec"]["grpc"]["services"] = ["grpcmesh.shop.v1.PaymentServiceV2"]
    response = validate(doc, services, catalog)
    assert denied_fields(response) == ["metadata.name"]


def test_derived_service_names_must_not_collide(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["catalog"]
    doc["metadata"]["name"] = "payments-v2"  # the name of payments' v2 Service
    doc["spec"]["grpc"]["services"] = ["grpcmesh.shop.v1.Other"]
    assert denied_fields(validate(doc, services, catalog)) == ["metadata.name"]

    other = copy.deepcopy(example_docs["inventory"])
    other["metadata"]["name"] = "cart-v1"
    other["spec"]["grpc"]["services"] = ["grpcmesh.shop.v1.Other"]
    del other["spec"]["methods"]
    known = services | {"cart-v1": parse_mesh_service(other, catalog=catalog)}
    doc = example_docs["inventory"]
    doc["metadata"]["name"] = "cart"
    doc["spec"]["grpc"]["services"] = ["grpcmesh.shop.v1.Cart"]
    del doc["spec"]["methods"]
    doc["spec"]["workload"]["version"] = "v1"  # its Service cart-v1 is the other's
    assert denied_fields(validate(doc, known, catalog)) == ["spec.workload.version"]


def test_mesh_variables_may_not_be_set(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["inventory"]["spec"]["workload"]["env"].append(
        {"name": "GRPCMESH_SIDECAR_EGRESS", "value": "10.0.0.1:1"}
    )
    response = validate(example_docs["inventory"], services, catalog)
    assert denied_fields(response) == ["spec.workload.env[1].name"]


def test_requests_fit_their_limits(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["catalog"]["spec"]["workload"]["resources"] = {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "1500m", "memory": "512Mi"},
    }
    response = validate(example_docs["catalog"], services, catalog)
    assert denied_fields(response) == ["spec.workload.resources.requests.memory"]
    assert "1Gi exceeds limits.memory 512Mi" in response["status"]["message"]


def test_reserved_ports_are_denied(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["orders"]["spec"]["grpc"]["port"] = 15001
    response = validate(example_docs["orders"], services, catalog)
    assert denied_fields(response) == ["spec.grpc.port"]


def test_appmesh_limits_are_reported(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["orders"]["spec"]["backends"].append(
        {"name": "fx", "external": {"host": "fx.example.com", "port": 443}}
    )
    response = validate(
        example_docs["orders"],
        services,
        catalog,
        settings=OperatorSettings(provider=Provider.APPMESH),
    )
    assert denied_fields(response) == ["spec.backends[3].external"]


def test_every_problem_is_reported_at_once(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["orders"]
    doc["spec"]["backends"].append({"name": "shipping"})
    doc["spec"]["grpc"]["port"] = 9464
    doc["spec"]["workload"]["env"] = [{"name": "GRPCMESH_PORT", "value": "1"}]
    fields = denied_fields(validate(doc, services, catalog, missing_backends=MissingBackends.DENY))
    assert fields == ["spec.backends[3].name", "spec.grpc.port", "spec.workload.env[0].name"]


def test_proxyless_is_denied_where_the_operator_cannot_render_it(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["orders"]
    doc["spec"]["proxyless"] = True
    doc["spec"]["workload"]["env"] = [{"name": "GRPCMESH_XDS_BOOTSTRAP", "value": "{}"}]
    fields = denied_fields(validate(doc, services, catalog))
    assert fields == ["spec.workload.env[0].name"]  # the bootstrap is the mesh's to set
    appmesh = OperatorSettings(provider=Provider.APPMESH)
    del doc["spec"]["workload"]["env"]
    denied = validate(doc, services, catalog, settings=appmesh)
    assert "spec.proxyless" in denied_fields(denied)


@pytest.mark.parametrize("obj", [None, "text", [], {"kind": "MeshService"}])
def test_malformed_objects_are_denied_not_crashed_on(
    obj: Any, services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    response = validate(obj, services, catalog)
    assert response["allowed"] is False
    assert response["status"]["message"]


def test_deletes_are_never_blocked(
    services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    answer = validate_admission(
        review(None, operation="DELETE"), known_services=services.values(), catalog=catalog
    )
    assert answer["response"] == {"allowed": True, "uid": UID}


# --- sidecar injection -------------------------------------------------------------------------


def pod(labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A pod that already fits the restricted profile, as a hardened workload would be."""
    security = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "shipping-6d4b75cb6d-", "labels": labels or {}},
        "spec": {
            "containers": [
                {
                    "name": "shipping",
                    "image": "example/shipping:1",
                    "securityContext": copy.deepcopy(security),
                    "env": [{"name": "LOG_LEVEL", "value": "debug"}],
                },
                {
                    "name": "helper",
                    "image": "example/helper:1",
                    "securityContext": copy.deepcopy(security),
                },
            ],
            **spec,
        },
    }
    return body


INJECT = {"grpcmesh.io/inject": "true", "grpcmesh.io/service": "shipping"}


def test_a_labelled_pod_gets_the_sidecar() -> None:
    settings = OperatorSettings()
    before = pod(INJECT, volumes=[{"name": "cache", "emptyDir": {}}])
    response = mutate_pod(review(before, kind="Pod"), settings=settings)
    assert response["response"]["allowed"] is True
    assert "warnings" not in response["response"]
    after = apply_review_patch(before, response)
    spec = after["spec"]
    (proxy,) = spec["initContainers"]
    assert proxy["name"] == PROXY_CONTAINER
    assert proxy["restartPolicy"] == "Always"
    assert "sidecar~shipping~$(POD_NAME)" in proxy["command"]
    assert spec["volumes"][-1] == {
        "name": BOOTSTRAP_VOLUME,
        "configMap": {"name": "shipping-envoy-bootstrap"},
    }
    for container in spec["containers"]:
        names = [e["name"] for e in container["env"]]
        assert {"GRPCMESH_SIDECAR_EGRESS", "GRPCMESH_SIDECAR_ADMIN"} <= set(names)
    assert spec["containers"][0]["env"][0] == {"name": "LOG_LEVEL", "value": "debug"}
    assert after["metadata"]["labels"]["grpcmesh.io/version"] == "v1"
    assert restricted_violations(spec, after["metadata"]) == []
    assert read_only_root_violations(spec) == []
    validate_builtin(after)


def test_the_sidecar_goes_first_among_init_containers() -> None:
    migrate = {"name": "migrate", "image": "example/migrate:1"}
    before = pod(INJECT, initContainers=[migrate])
    after = apply_review_patch(before, mutate_pod(review(before, kind="Pod")))
    assert [c["name"] for c in after["spec"]["initContainers"]] == [PROXY_CONTAINER, "migrate"]
    assert after["spec"]["volumes"] == [
        {"name": BOOTSTRAP_VOLUME, "configMap": {"name": "shipping-envoy-bootstrap"}}
    ]


def test_injection_is_idempotent() -> None:
    before = pod({**INJECT, "grpcmesh.io/version": "v2"})
    once = apply_review_patch(before, mutate_pod(review(before, kind="Pod")))
    assert once["metadata"]["labels"]["grpcmesh.io/version"] == "v2"  # kept
    again = mutate_pod(review(once, kind="Pod"))
    assert again["response"] == {"allowed": True, "uid": UID}
    assert apply_review_patch(once, again) == once


@pytest.mark.parametrize(
    "labels",
    [None, {"grpcmesh.io/service": "shipping"}, {"grpcmesh.io/inject": "false", "x": "y"}],
)
def test_unlabelled_pods_are_untouched(labels: dict[str, str] | None) -> None:
    response = mutate_pod(review(pod(labels), kind="Pod"))
    assert response["response"] == {"allowed": True, "uid": UID}


def test_only_creates_are_mutated() -> None:
    response = mutate_pod(review(pod(INJECT), operation="UPDATE", kind="Pod"))
    assert response["response"] == {"allowed": True, "uid": UID}


def test_an_injected_pod_must_name_its_service() -> None:
    response = mutate_pod(review(pod({"grpcmesh.io/inject": "true"}), kind="Pod"))["response"]
    assert response["allowed"] is False
    assert 'metadata.labels["grpcmesh.io/service"]' in response["status"]["message"]


def test_a_non_restricted_pod_is_injected_with_a_warning() -> None:
    before = pod(INJECT)
    before["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    response = mutate_pod(review(before, kind="Pod"))["response"]
    assert response["allowed"] is True
    assert response["warnings"] == [
        "not PSS restricted: spec.containers[0].securityContext.allowPrivilegeEscalation: "
        "must be false"
    ]
    patch = json.loads(base64.b64decode(response["patch"]))
    assert all(op["op"] == "add" for op in patch)


def test_the_appmesh_provider_does_not_inject() -> None:
    response = mutate_pod(
        review(pod(INJECT), kind="Pod"), settings=OperatorSettings(provider=Provider.APPMESH)
    )["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert response["warnings"]


def test_a_version_may_not_set_mesh_variables_either(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["payments"]["spec"]["versions"][1]["env"] = [
        {"name": "FEATURE", "value": "on"},
        {"name": "GRPCMESH_VERSION", "value": "v9"},
    ]
    response = validate(example_docs["payments"], services, catalog)
    assert denied_fields(response) == ["spec.versions[1].env[1].name"]


def test_an_unknown_field_is_denied_with_the_field_it_resembles(
    example_docs: dict[str, Any], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    example_docs["orders"]["spec"]["trafficPolicy"]["timout"] = "2s"
    response = validate(example_docs["orders"], services, catalog)
    assert denied_fields(response) == ["spec.trafficPolicy.timout"]
    assert "unknown field (did you mean timeout?)" in response["status"]["message"]


XDS_AUTH = OperatorSettings(
    xds_credential=XdsCredential(
        root_pem="-----BEGIN CERTIFICATE-----\n", token_exchange_uri="http://control:18001/token"
    )
)


@pytest.mark.parametrize("account", [None, "default"])
def test_with_xds_auth_an_injected_pod_runs_under_its_services_account(
    account: str | None,
) -> None:
    spec = {} if account is None else {"serviceAccountName": account, "serviceAccount": account}
    before = pod(INJECT, **spec)
    response = mutate_pod(review(before, kind="Pod"), settings=XDS_AUTH)
    assert response["response"]["allowed"] is True
    after = apply_review_patch(before, response)
    assert after["spec"]["serviceAccountName"] == "shipping"
    if account is not None:
        assert after["spec"]["serviceAccount"] == "shipping"
    # Without xDS authentication the pod keeps the account it has.
    plain = apply_review_patch(before, mutate_pod(review(before, kind="Pod")))
    assert plain["spec"].get("serviceAccountName") == account


def test_with_xds_auth_a_pod_naming_another_account_is_refused() -> None:
    before = pod(INJECT, serviceAccountName="billing")
    response = mutate_pod(review(before, kind="Pod"), settings=XDS_AUTH)["response"]
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert "spec.serviceAccountName" in message and "'shipping'" in message
    # Its own account is accepted as it is.
    same = pod(INJECT, serviceAccountName="shipping")
    assert mutate_pod(review(same, kind="Pod"), settings=XDS_AUTH)["response"]["allowed"] is True
