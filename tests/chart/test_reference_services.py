"""The reference shop's MeshServices: valid for our CRD's schema, admitted by the operator's own
validating webhook logic (so the chart never ships what the webhook would deny), and the
shapes of manifests/examples with the images, replicas and resources from values."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from grpcmesh_control.cluster.objects import (
    MissingBackends,
    OperatorSettings,
    Provider,
    validate_admission,
)
from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.model import parse_mesh_service
from tests.kube_schemas import crd_errors
from tests.mesh_security import REFERENCE_RULES

from .chart import CHART, NAMESPACE, REPO, Obj, find, load_yaml, render

NAMES = ("catalog", "inventory", "payments", "orders")
EXAMPLES = REPO / "manifests" / "examples"


def mesh_services(values: Obj | None = None) -> dict[str, Obj]:
    objects = render(values or {})
    return {svc["metadata"]["name"]: svc for svc in find(objects, "MeshService")}


def review(obj: Obj) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "grpcmesh.io", "version": "v1alpha1", "kind": "MeshService"},
            "operation": "CREATE",
            "namespace": NAMESPACE,
            "object": obj,
        },
    }


def test_rendered_by_default_and_only_when_enabled() -> None:
    assert set(mesh_services()) == set(NAMES)
    assert mesh_services({"referenceServices": {"enabled": False}}) == {}


def test_valid_for_the_crd_schema() -> None:
    (crd,) = load_yaml(CHART / "crds" / "meshservices.grpcmesh.io.yaml")
    (version,) = crd["spec"]["versions"]
    for name, svc in mesh_services().items():
        assert svc["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
        assert crd_errors(svc) == [], name


@pytest.mark.parametrize("provider", list(Provider), ids=lambda p: p.value)
def test_admitted_by_the_validating_webhook(provider: Provider) -> None:
    catalog = load_catalog()
    services = mesh_services({"provider": provider.value})
    settings = OperatorSettings(provider=provider)
    for name, svc in services.items():
        others = [parse_mesh_service(s, catalog=catalog) for n, s in services.items() if n != name]
        response = validate_admission(
            review(svc),
            known_services=others,
            catalog=catalog,
            settings=settings,
            missing_backends=MissingBackends.DENY,
        )["response"]
        assert response["allowed"], (name, response.get("status"))
        assert "warnings" not in response, (name, response["warnings"])


def test_admitted_in_any_order() -> None:
    """``helm install`` creates them in one go, so orders may arrive before its backends:
    with the chart's default (warn) it is admitted with a warning, never denied."""
    catalog = load_catalog()
    response = validate_admission(
        review(mesh_services()["orders"]),
        known_services=[],
        catalog=catalog,
        missing_backends=MissingBackends.WARN,
    )["response"]
    assert response["allowed"]
    assert len(response["warnings"]) == 3  # catalog, inventory, payments not there yet


def test_shapes_follow_the_examples() -> None:
    services = mesh_services()
    for name in NAMES:
        (example,) = load_yaml(EXAMPLES / f"{name}.yaml")
        spec = copy.deepcopy(services[name]["spec"])
        expected = copy.deepcopy(example["spec"])
        # The examples are every local test's mesh, so they leave authorization out; the
        # chart's rules are checked below.
        spec.pop("authorization")
        for doc in (spec, expected):
            doc.pop("replicas", None)
            doc["workload"].pop("image")
            doc["workload"].pop("resources", None)
        # The example's v2 canary needs a second image; the chart ships the released one.
        expected.pop("versions", None)
        assert spec == expected, name


def test_authorization_allows_exactly_the_sagas_calls_except_with_app_mesh() -> None:
    """The rules local mode's authorization test applies (tests/mesh_security.py), and the
    cluster tier runs the saga under. App Mesh cannot enforce them and the operator refuses
    them there, so the chart leaves them out with that provider."""
    for name, svc in mesh_services().items():
        assert svc["spec"]["authorization"] == {"rules": REFERENCE_RULES[name]}, name
    for name, svc in mesh_services({"provider": "appmesh"}).items():
        assert "authorization" not in svc["spec"], name


def test_images_replicas_and_resources_come_from_values() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["referenceServices"]
    services = mesh_services()
    for name in NAMES:
        spec = services[name]["spec"]
        assert spec["workload"]["image"] == f"ghcr.io/grpcmesh/grpcmesh-{name}:0.1.0"
        assert spec["replicas"] == values[name]["replicas"]
        assert spec["workload"]["resources"] == values[name]["resources"]
    custom = {
        "referenceServices": {
            "orders": {
                "image": {"tag": "1.2.3"},
                "replicas": 5,
                "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
            }
        }
    }
    orders = mesh_services(custom)["orders"]["spec"]
    assert orders["workload"]["image"] == "ghcr.io/grpcmesh/grpcmesh-orders:1.2.3"
    assert orders["replicas"] == 5
    assert orders["workload"]["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    assert mesh_services()["catalog"]["metadata"]["namespace"] == NAMESPACE
