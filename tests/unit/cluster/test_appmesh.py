"""The appmesh provider: every object validates against the App Mesh controller's CRDs, and
carries the traffic policy the native provider would apply (routes, retries, weights)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from grpcmesh_control.cluster.objects import (
    AppMeshSettings,
    EgressFilter,
    OperatorSettings,
    Provider,
    appmesh_objects,
    render_problems,
)
from grpcmesh_control.cluster.objects.appmesh import GRPC_RETRY_EVENTS, _duration
from grpcmesh_control.mesh.ca import CertificateSettings
from grpcmesh_control.mesh.model import MeshService, MethodCatalog, RetryOn, parse_mesh_service
from tests.unit.examples import EXAMPLE_NAMES

from .checks import crd_errors
from .conftest import NAMESPACE, owner_of

Obj = dict[str, Any]


def render(
    svc: MeshService, settings: OperatorSettings, catalog: MethodCatalog | None
) -> dict[tuple[str, str], Obj]:
    objects = appmesh_objects(
        svc, namespace=NAMESPACE, owner=owner_of(svc.name), settings=settings, catalog=catalog
    )
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_objects_validate_against_the_contracts(
    services: dict[str, MeshService],
    appmesh_settings: OperatorSettings,
    catalog: MethodCatalog,
    name: str,
) -> None:
    objects = render(services[name], appmesh_settings, catalog)
    assert {kind for kind, _ in objects} == {
        "Mesh",
        "VirtualNode",
        "VirtualRouter",
        "VirtualService",
    }
    for (kind, obj_name), obj in objects.items():
        assert crd_errors(obj) == [], f"{kind}/{obj_name}"


def test_mesh_is_shared_and_unowned(
    services: dict[str, MeshService], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    meshes = [render(s, appmesh_settings, catalog)[("Mesh", "grpcmesh")] for s in services.values()]
    assert all(m == meshes[0] for m in meshes)  # every service applies the same Mesh
    mesh = meshes[0]
    assert "namespace" not in mesh["metadata"]
    assert "ownerReferences" not in mesh["metadata"]  # cluster-scoped: no namespaced owner
    assert mesh["spec"] == {
        "egressFilter": {"type": "DROP_ALL"},
        "namespaceSelector": {"matchLabels": {"mesh": "grpcmesh"}},
    }


def test_virtual_nodes_per_version(
    services: dict[str, MeshService], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    objects = render(services["payments"], appmesh_settings, catalog)
    v2 = objects[("VirtualNode", "payments-v2")]
    spec = v2["spec"]
    assert spec["podSelector"] == {
        "matchLabels": {"grpcmesh.io/service": "payments", "grpcmesh.io/version": "v2"}
    }
    assert spec["serviceDiscovery"] == {
        "dns": {"hostname": "payments-v2.default.svc.cluster.local", "responseType": "ENDPOINTS"}
    }
    (listener,) = spec["listeners"]
    assert listener["portMapping"] == {"port": 50051, "protocol": "grpc"}
    assert listener["connectionPool"] == {"grpc": {"maxRequests": 100}}
    assert listener["outlierDetection"] == {
        "baseEjectionDuration": {"unit": "s", "value": 30},
        "interval": {"unit": "s", "value": 10},
        "maxEjectionPercent": 10,
        "maxServerErrors": 5,
    }
    assert "meshRef" not in spec  # filled by the App Mesh controller's webhook
    assert v2["metadata"]["ownerReferences"][0]["name"] == "payments"


def test_backends_are_virtual_services(
    services: dict[str, MeshService], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    node = render(services["orders"], appmesh_settings, catalog)[("VirtualNode", "orders-v1")]
    assert [b["virtualService"]["virtualServiceRef"] for b in node["spec"]["backends"]] == [
        {"name": name} for name in ("catalog", "inventory", "payments")
    ]


def test_backends_originate_mtls_and_pin_each_backends_identity(
    services: dict[str, MeshService], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    # As App Mesh's SPIRE integration expects: SDS secrets named by SPIFFE ID and trust domain.
    settings = dataclasses.replace(
        appmesh_settings, identity=CertificateSettings(trust_domain="mesh.example")
    )
    node = render(services["orders"], settings, catalog)[("VirtualNode", "orders-v1")]
    names = ("catalog", "inventory", "payments")
    for backend, name in zip(node["spec"]["backends"], names, strict=True):
        assert backend["virtualService"]["clientPolicy"] == {
            "tls": {
                "certificate": {
                    "sds": {"secretName": "spiffe://mesh.example/ns/default/sa/orders"}
                },
                "enforce": True,
                "validation": {
                    "subjectAlternativeNames": {
                        "match": {"exact": [f"spiffe://mesh.example/ns/default/sa/{name}"]}
                    },
                    "trust": {"sds": {"secretName": "spiffe://mesh.example"}},
                },
            }
        }
    assert crd_errors(node) == []


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE"])
def test_each_listener_terminates_mtls_in_the_services_mode(
    example_docs: dict[str, Any],
    appmesh_settings: OperatorSettings,
    catalog: MethodCatalog,
    mode: str,
) -> None:
    doc = example_docs["payments"]
    if mode != "STRICT":  # STRICT is the default: the example does not say it
        doc["spec"]["mtls"] = {"mode": mode}
    svc = parse_mesh_service(doc, catalog=catalog)
    objects = appmesh_objects(
        svc, namespace="shop", owner=owner_of(svc.name), settings=appmesh_settings, catalog=catalog
    )
    nodes = [o for o in objects if o["kind"] == "VirtualNode"]
    assert len(nodes) == len(svc.versions)
    for node in nodes:
        [listener] = node["spec"]["listeners"]
        assert listener["tls"] == {
            "certificate": {"sds": {"secretName": "spiffe://cluster.local/ns/shop/sa/payments"}},
            "mode": mode,
            "validation": {"trust": {"sds": {"secretName": "spiffe://cluster.local"}}},
        }
        assert crd_errors(node) == []
    assert render_problems(svc, appmesh_settings, catalog) == ()


def test_external_backends_get_no_client_tls(
    example_docs: dict[str, Any], catalog: MethodCatalog
) -> None:
    settings = OperatorSettings(
        provider=Provider.APPMESH,
        appmesh=AppMeshSettings(egress_filter=EgressFilter.ALLOW_ALL),
    )
    doc = example_docs["payments"]
    doc["spec"]["backends"] = [
        {"name": "psp", "external": {"host": "psp.example.com", "port": 443}}
    ]
    svc = parse_mesh_service(doc, catalog=catalog)
    objects = appmesh_objects(svc, namespace=NAMESPACE, owner=owner_of(svc.name), settings=settings)
    for node in (o for o in objects if o["kind"] == "VirtualNode"):
        assert "backends" not in node["spec"]


def test_weighted_targets(
    services: dict[str, MeshService], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    router = render(services["payments"], appmesh_settings, catalog)[("VirtualRouter", "payments")]
    for route in router["spec"]["routes"]:
        assert route["grpcRoute"]["action"]["weightedTargets"] == [
            {"port": 50051, "virtualNodeRef": {"name": "payments-v1"}, "weight": 90},
            {"port": 50051, "virtualNodeRef": {"name": "payments-v2"}, "weight": 10},
        ]


def test_routes_follow_the_native_policy(
    services: dict[str, MeshService], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    router = render(services["orders"], appmesh_settings, catalog)[("VirtualRouter", "orders")]
    routes = {r["name"]: r for r in router["spec"]["routes"]}
    service = "grpcmesh.shop.v1.OrderService"
    # PlaceOrder: its own deadline and retry override; the service route has no retries,
    # since OrderService's other methods are not idempotent.
    place = routes[f"{service}-PlaceOrder"]["grpcRoute"]
    assert place["match"] == {"methodName": "PlaceOrder", "serviceName": service}
    assert place["timeout"] == {"perRequest": {"unit": "s", "value": 10}}
    assert place["retryPolicy"] == {
        "grpcRetryEvents": ["unavailable"],
        "maxRetries": 1,
        "perRetryTimeout": {"unit": "s", "value": 8},
        "tcpRetryEvents": ["connection-error"],
    }
    # WatchOrder streams: no deadline.
    watch = routes[f"{service}-WatchOrder"]["grpcRoute"]
    assert watch["timeout"] == {"perRequest": {"unit": "s", "value": 0}}
    prefix = routes[service]
    assert prefix["grpcRoute"]["match"] == {"serviceName": service}
    assert prefix["grpcRoute"]["timeout"] == {"perRequest": {"unit": "s", "value": 2}}
    assert "retryPolicy" not in prefix["grpcRoute"]
    # Method routes first, in the native provider's order.
    priorities = [r["priority"] for r in router["spec"]["routes"]]
    assert priorities == sorted(priorities) and prefix["priority"] == priorities[-1]


def test_idempotent_services_retry_on_their_codes(
    services: dict[str, MeshService], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    router = render(services["catalog"], appmesh_settings, catalog)[("VirtualRouter", "catalog")]
    *methods, prefix = router["spec"]["routes"]
    # Retries only on routes of methods the protos call safe to repeat (all of catalog's);
    # the service prefix (a method the catalog does not know) is never retried.
    assert {m["grpcRoute"]["match"]["methodName"] for m in methods} == {
        m.name for m in catalog.methods("grpcmesh.shop.v1.CatalogService")
    }
    for method in methods:
        assert method["grpcRoute"]["retryPolicy"] == {
            "grpcRetryEvents": ["unavailable", "resource-exhausted"],
            "maxRetries": 3,
            "perRetryTimeout": {"unit": "ms", "value": 300},
            "tcpRetryEvents": ["connection-error"],
        }
    assert "retryPolicy" not in prefix["grpcRoute"]
    # Without the catalog nothing is known to be idempotent: one route, no retries.
    (blind,) = render(services["catalog"], appmesh_settings, None)[("VirtualRouter", "catalog")][
        "spec"
    ]["routes"]
    assert "retryPolicy" not in blind["grpcRoute"]


def test_virtual_service_names_the_dns_name(
    services: dict[str, MeshService], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    vs = render(services["orders"], appmesh_settings, catalog)[("VirtualService", "orders")]
    assert vs["spec"] == {
        "awsName": "orders.default.svc.cluster.local",
        "provider": {"virtualRouter": {"virtualRouterRef": {"name": "orders"}}},
    }


def test_every_retry_code_has_an_app_mesh_event() -> None:
    assert set(GRPC_RETRY_EVENTS) == set(RetryOn)
    assert GRPC_RETRY_EVENTS[RetryOn.DEADLINE_EXCEEDED] == "deadline-exceeded"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), {"unit": "s", "value": 0}),
        (timedelta(seconds=90), {"unit": "s", "value": 90}),
        (timedelta(milliseconds=1500), {"unit": "ms", "value": 1500}),
        (timedelta(microseconds=1), {"unit": "ms", "value": 1}),  # never rounds to "none"
    ],
)
def test_durations(value: timedelta, expected: dict[str, Any]) -> None:
    assert _duration(value) == expected


def test_external_backends_need_allow_all(
    example_docs: dict[str, Any], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    example_docs["orders"]["spec"]["backends"].append(
        {"name": "fx", "external": {"host": "fx.example.com", "port": 443}}
    )
    svc = parse_mesh_service(example_docs["orders"], catalog=catalog)
    (problem,) = render_problems(svc, appmesh_settings, catalog)
    assert problem.path == "spec.backends[3].external"
    allow = dataclasses.replace(
        appmesh_settings,
        appmesh=dataclasses.replace(appmesh_settings.appmesh, egress_filter=EgressFilter.ALLOW_ALL),
    )
    assert render_problems(svc, allow, catalog) == ()
    objects = render(svc, allow, catalog)
    assert objects[("Mesh", "grpcmesh")]["spec"]["egressFilter"] == {"type": "ALLOW_ALL"}
    for obj in objects.values():
        assert crd_errors(obj) == []


def test_fault_injection_is_refused_naming_the_field(
    example_docs: dict[str, Any], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    doc = example_docs["catalog"]
    doc["spec"].setdefault("trafficPolicy", {})["fault"] = {
        "abort": {"grpcStatus": "UNAVAILABLE", "percentage": 5}
    }
    doc["spec"]["methods"] = [
        {
            "name": "grpcmesh.shop.v1.CatalogService/GetProduct",
            "fault": {"delay": {"fixedDelay": "1s", "percentage": 1}},
        }
    ]
    svc = parse_mesh_service(doc, catalog=catalog)
    problems = render_problems(svc, appmesh_settings, catalog)
    assert [p.path for p in problems] == ["spec.trafficPolicy.fault", "spec.methods[0].fault"]
    assert all("appmesh provider cannot inject faults" in p.reason for p in problems)
    # an empty fault (turning injection off) is expressible: nothing to refuse
    doc["spec"]["trafficPolicy"]["fault"] = {}
    doc["spec"]["methods"][0]["fault"] = {}
    assert (
        render_problems(parse_mesh_service(doc, catalog=catalog), appmesh_settings, catalog) == ()
    )


def test_authorization_is_refused_naming_the_field(
    example_docs: dict[str, Any], appmesh_settings: OperatorSettings, catalog: MethodCatalog
) -> None:
    doc = example_docs["payments"]
    doc["spec"]["authorization"] = {"rules": [{"from": {"services": ["orders"]}}]}
    problems = render_problems(parse_mesh_service(doc, catalog=catalog), appmesh_settings, catalog)
    assert [p.path for p in problems] == ["spec.authorization"]
    assert "appmesh provider cannot enforce authorization" in problems[0].reason
