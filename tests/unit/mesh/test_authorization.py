"""``spec.authorization``: parsed and refused naming the field, and translated (without sockets)
into the inbound listener's RBAC filter. A real Envoy enforcing it:
tests/integration/test_authorization_envoy.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from google.protobuf import json_format

from grpcmesh_control.mesh.errors import InvalidResource
from grpcmesh_control.mesh.model import (
    AllowedCalls,
    Authorization,
    AuthorizationRule,
    Callers,
    MeshService,
    MethodCatalog,
    parse_mesh_service,
)
from grpcmesh_control.mesh.translate import NodeId, ProxyNode, Registry, SnapshotBuilder
from grpcmesh_control.mesh.translate.authorization import (
    RBAC_FILTER,
    authorization_filter,
    denial_policy_name,
)
from grpcmesh_control.mesh.translate.tls import MeshTls
from tests.unit.examples import example_doc

from .envoy_views import hcm, listener

PAYMENTS = "grpcmesh.shop.v1.PaymentService"


def payments_with(authorization: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    doc = example_doc("payments")
    doc["spec"]["authorization"] = authorization
    if namespace:
        doc["metadata"]["namespace"] = namespace
    return doc


def refused_fields(doc: dict[str, Any], catalog: MethodCatalog | None = None) -> set[str]:
    with pytest.raises(InvalidResource) as refused:
        parse_mesh_service(doc, catalog=catalog)
    return {error.path for error in refused.value.errors}


def test_rules_parse_into_callers_and_methods() -> None:
    svc = parse_mesh_service(
        payments_with(
            {
                "rules": [
                    {
                        "from": {"services": ["orders", "ops/audit"], "namespaces": ["shop"]},
                        "to": [{"service": PAYMENTS, "methods": ["Charge"]}],
                    },
                    {"from": {"ingress": True}},
                ]
            }
        )
    )
    assert svc.authorization == Authorization(
        (
            AuthorizationRule(
                Callers(services=("orders", "ops/audit"), namespaces=("shop",)),
                (AllowedCalls(PAYMENTS, ("Charge",)),),
            ),
            AuthorizationRule(Callers(ingress=True)),
        )
    )
    assert parse_mesh_service(example_doc("payments")).authorization is None


@pytest.mark.parametrize(
    ("authorization", "field"),
    [
        (
            {
                "rules": [
                    {
                        "from": {"services": ["orders"]},
                        "to": [{"service": PAYMENTS, "methods": ["Chrage"]}],
                    }
                ]
            },
            "spec.authorization.rules[0].to[0].methods[0]",
        ),
        (
            {
                "rules": [
                    {
                        "from": {"services": ["orders"]},
                        "to": [{"service": "grpcmesh.shop.v1.OrderService"}],
                    }
                ]
            },
            "spec.authorization.rules[0].to[0].service",
        ),
        ({"rules": [{"from": {"ingress": False}}]}, "spec.authorization.rules[0].from"),
        (
            {"rules": [{"from": {"services": ["orders", "orders"]}}]},
            "spec.authorization.rules[0].from.services[1]",
        ),
        (
            {"rules": [{"from": {"services": ["Orders"]}}]},
            "spec.authorization.rules[0].from.services[0]",
        ),
        (
            {"rules": [{"from": {"service": ["orders"]}}]},
            "spec.authorization.rules[0].from.service",
        ),
        ({}, "spec.authorization.rules"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(
    authorization: dict[str, Any], field: str, catalog: MethodCatalog
) -> None:
    assert field in refused_fields(payments_with(authorization), catalog)


def test_an_unknown_field_in_from_gets_a_did_you_mean() -> None:
    with pytest.raises(InvalidResource) as refused:
        parse_mesh_service(payments_with({"rules": [{"from": {"service": ["orders"]}}]}))
    assert "did you mean services?" in str(refused.value)


def rbac(
    svc: MeshService, catalog: MethodCatalog, tls: MeshTls | None = None
) -> rbac_filter_pb2.RBAC:
    found = authorization_filter(svc, catalog, tls)
    assert found is not None and found.name == RBAC_FILTER
    config = rbac_filter_pb2.RBAC()
    found.typed_config.Unpack(config)
    return config


def principals(policy: rbac_pb2.Policy) -> list[dict[str, Any]]:
    return [json_format.MessageToDict(p) for p in policy.principals]


def test_callers_are_matched_on_their_verified_spiffe_id(catalog: MethodCatalog) -> None:
    doc = payments_with(
        {
            "rules": [
                {"from": {"services": ["orders", "ops/audit"], "namespaces": ["batch"]}},
                {
                    "from": {"ingress": True},
                    "to": [{"service": PAYMENTS, "methods": ["GetPayment"]}],
                },
            ]
        },
        namespace="shop",
    )
    config = rbac(parse_mesh_service(doc), catalog, MeshTls("example.org", "edge"))
    enforced = config.rules
    assert enforced.action == rbac_pb2.RBAC.ALLOW
    assert set(enforced.policies) == {"health", "rule-0", "rule-1"}
    (anyone,) = enforced.policies["health"].principals
    assert anyone.any
    rule0 = json_format.MessageToDict(enforced.policies["rule-0"])
    ids = rule0["principals"][0]["orIds"]["ids"]
    names = [i["authenticated"]["principalName"] for i in ids]
    assert names == [
        {"exact": "spiffe://example.org/ns/shop/sa/orders"},
        {"exact": "spiffe://example.org/ns/ops/sa/audit"},
        {"safeRegex": {"regex": "spiffe://example\\.org/ns/batch/sa/[^/]+"}},
    ]
    # No `to`: every method of the service's own gRPC services, nothing else.
    assert rule0["permissions"] == [{"urlPath": {"path": {"prefix": f"/{PAYMENTS}/"}}}]
    rule1 = json_format.MessageToDict(enforced.policies["rule-1"])
    assert rule1["principals"] == [
        {
            "authenticated": {
                "principalName": {"exact": "spiffe://example.org/ns/edge/sa/grpcmesh-ingress"}
            }
        }
    ]
    assert rule1["permissions"] == [{"urlPath": {"path": {"exact": f"/{PAYMENTS}/GetPayment"}}}]


def test_denials_are_counted_per_caller_and_method(catalog: MethodCatalog) -> None:
    doc = payments_with(
        {
            "rules": [
                {
                    "from": {"services": ["orders"]},
                    "to": [{"service": PAYMENTS, "methods": ["Charge", "Refund"]}],
                },
                {
                    "from": {"ingress": True},
                    "to": [{"service": PAYMENTS, "methods": ["GetPayment"]}],
                },
            ]
        }
    )
    config = rbac(parse_mesh_service(doc), catalog)
    assert config.shadow_rules.action == rbac_pb2.RBAC.DENY
    assert config.track_per_rule_stats
    assert [m.name for m in catalog.methods(PAYMENTS)] == ["Charge", "GetPayment", "Refund"]
    # Envoy makes a label of a policy name only without dots: the service without its package.
    methods = ["PaymentService/Charge", "PaymentService/GetPayment", "PaymentService/Refund"]
    expected = {
        denial_policy_name(caller, method)
        for caller in ("orders", "ingress", "other")
        for method in [*methods, "other"]
    }
    assert set(config.shadow_rules.policies) == expected
    assert not any("." in name for name in config.shadow_rules.policies)


def test_services_sharing_a_name_keep_their_package_in_denial_names(
    catalog: MethodCatalog,
) -> None:
    doc = payments_with({"rules": [{"from": {"ingress": True}}]})
    doc["spec"]["grpc"]["services"] = [PAYMENTS, "legacy.v1.PaymentService"]
    config = rbac(parse_mesh_service(doc), catalog)
    names = set(config.shadow_rules.policies)
    assert denial_policy_name("other", "grpcmesh_shop_v1_PaymentService/Charge") in names
    assert denial_policy_name("other", "legacy_v1_PaymentService/*") in names
    assert not any("." in name for name in names)


def test_no_authorization_leaves_the_inbound_listener_open(registry: Registry) -> None:
    svc = registry.service("payments")
    assert svc is not None and svc.authorization is None
    assert authorization_filter(svc, registry.catalog) is None
    snapshot = SnapshotBuilder()(registry, ProxyNode(NodeId.sidecar("payments", "payments-0")))
    filters = [f.name for f in hcm(listener(snapshot, "inbound")).http_filters]
    assert RBAC_FILTER not in filters


def test_a_rule_change_reaches_the_sidecar_of_that_service_only(registry: Registry) -> None:
    builder = SnapshotBuilder()
    payments_node = ProxyNode(NodeId.sidecar("payments", "payments-0"))
    orders_node = ProxyNode(NodeId.sidecar("orders", "orders-0"))
    before_payments = builder(registry, payments_node)
    before_orders = builder(registry, orders_node)

    payments = registry.service("payments")
    assert payments is not None
    rules = Authorization((AuthorizationRule(Callers(services=("orders",))),))
    changed = Registry.build(
        [replace(payments, authorization=rules) if s is payments else s for s in registry.services],
        registry.endpoints,
        registry.catalog,
    )
    after_payments = builder(changed, payments_node)
    after_orders = builder(changed, orders_node)

    inbound = hcm(listener(after_payments, "inbound"))
    assert inbound.http_filters[0].name == RBAC_FILTER
    assert listener(before_payments, "inbound") != listener(after_payments, "inbound")
    assert listener(before_orders, "inbound") is listener(after_orders, "inbound")
