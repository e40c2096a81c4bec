"""The operator's RBAC (manifests/rbac): valid objects, no wildcards, and every kind the
operator writes is covered with exactly the verbs apply and prune need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.objects import OWNED_KINDS, Kind
from grpcmesh_control.cluster.objects.kinds import (
    MUTATING_WEBHOOK_CONFIGURATION,
    SECRET,
    VALIDATING_WEBHOOK_CONFIGURATION,
)
from tests.unit.examples import REPO

from .checks import validate_builtin

RBAC = REPO / "manifests" / "rbac"
WRITE_VERBS = {"get", "list", "watch", "create", "patch", "delete"}
APPMESH_GROUP = "appmesh.k8s.aws"


def load(path: Path) -> list[dict[str, Any]]:
    with path.open() as stream:
        return [d for d in yaml.safe_load_all(stream) if d]


def rules(path: Path, kind: str = "ClusterRole") -> list[dict[str, Any]]:
    (role,) = [d for d in load(path) if d["kind"] == kind]
    found: list[dict[str, Any]] = role["rules"]
    return found


def all_rules(path: Path) -> list[dict[str, Any]]:
    return [r for d in load(path) if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]


def allowed(rule_list: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in rule_list:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            verbs |= set(rule["verbs"])
    return verbs


NATIVE = rules(RBAC / "operator.yaml")
APPMESH = rules(RBAC / "operator-appmesh.yaml")
WEBHOOK_TLS = RBAC / "operator-webhook-certs.yaml"
MESH_CA = RBAC / "operator-mesh-ca.yaml"


@pytest.mark.parametrize("path", sorted(RBAC.glob("*.yaml")), ids=lambda p: p.name)
def test_objects_validate(path: Path) -> None:
    for doc in load(path):
        validate_builtin(doc)


@pytest.mark.parametrize("path", sorted(RBAC.glob("*.yaml")), ids=lambda p: p.name)
def test_no_wildcards(path: Path) -> None:
    for rule in all_rules(path):
        for key in ("apiGroups", "resources", "verbs"):
            assert all("*" not in item for item in rule[key]), rule
        assert "nonResourceURLs" not in rule


@pytest.mark.parametrize("kind", OWNED_KINDS, ids=lambda k: k.kind)
def test_every_written_kind_is_covered(kind: Kind) -> None:
    rule_list = APPMESH if kind.group == APPMESH_GROUP else NATIVE
    assert allowed(rule_list, kind.group, kind.plural) == WRITE_VERBS


def test_app_mesh_rules_only_in_their_own_role() -> None:
    assert all(APPMESH_GROUP not in r["apiGroups"] for r in NATIVE)
    assert {g for r in APPMESH for g in r["apiGroups"]} == {APPMESH_GROUP}


def test_the_rest_is_least_privilege() -> None:
    assert allowed(NATIVE, "grpcmesh.io", "meshservices") == {"get", "list", "watch", "patch"}
    assert allowed(NATIVE, "grpcmesh.io", "meshservices/status") == {"get", "patch"}
    assert allowed(NATIVE, "grpcmesh.io", "meshservices/finalizers") == set()
    assert allowed(NATIVE, "discovery.k8s.io", "endpointslices") == {"list", "watch"}
    assert allowed(NATIVE, "", "events") == {"create"}
    # xDS authentication asks the API server who a sidecar's token belongs to; nothing more.
    assert allowed(NATIVE, "authentication.k8s.io", "tokenreviews") == {"create"}
    crds = allowed(NATIVE, "apiextensions.k8s.io", "customresourcedefinitions")
    assert crds == {"get", "list", "watch"}
    peerings = allowed(NATIVE, "kopf.dev", "clusterkopfpeerings")
    assert peerings == {"get", "list", "watch", "patch"}
    # Nothing it does not use: pods, secrets, namespaces, namespaced peering, leases, webhooks.
    for group, resource in [
        ("", "pods"),
        ("", "secrets"),
        ("", "namespaces"),
        ("kopf.dev", "kopfpeerings"),
        ("coordination.k8s.io", "leases"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    ]:
        assert allowed(NATIVE, group, resource) == set(), resource
    covered = {(g, r) for rule in NATIVE for g in rule["apiGroups"] for r in rule["resources"]}
    expected = {(k.group, k.plural) for k in OWNED_KINDS if k.group != APPMESH_GROUP} | {
        ("grpcmesh.io", "meshservices"),
        ("grpcmesh.io", "meshservices/status"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "events"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("kopf.dev", "clusterkopfpeerings"),
        ("authentication.k8s.io", "tokenreviews"),
    }
    assert covered == expected


def test_webhook_tls_rules_reach_one_secret_and_two_configurations_by_name() -> None:
    settings = RuntimeSettings()
    secret_name = "grpcmesh-webhook-tls"  # the chart's <release>-webhook-tls
    namespaced = rules(WEBHOOK_TLS, "Role")
    assert {(tuple(r.get("resourceNames", ())), tuple(r["verbs"])) for r in namespaced} == {
        ((), ("create",)),
        ((secret_name,), ("get", "patch")),
    }
    assert all(r["resources"] == [SECRET.plural] for r in namespaced)
    (cluster,) = rules(WEBHOOK_TLS)
    assert set(cluster["resources"]) == {
        VALIDATING_WEBHOOK_CONFIGURATION.plural,
        MUTATING_WEBHOOK_CONFIGURATION.plural,
    }
    assert cluster["resourceNames"] == ["grpcmesh"] and cluster["verbs"] == ["get", "patch"]
    (role,) = [d for d in load(WEBHOOK_TLS) if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == settings.namespace


def test_mesh_ca_rules_read_one_secret_by_name_and_only_create_others() -> None:
    """The mesh CA's Role: ``create`` Secrets in the operator's namespace, ``get`` the one
    (the chart's <release>-mesh-ca); no list, watch, patch or cluster-wide grant."""
    namespaced = rules(MESH_CA, "Role")
    assert {(tuple(r.get("resourceNames", ())), tuple(r["verbs"])) for r in namespaced} == {
        ((), ("create",)),
        (("grpcmesh-mesh-ca",), ("get",)),
    }
    assert all(r["resources"] == [SECRET.plural] for r in namespaced)
    assert [d["kind"] for d in load(MESH_CA)] == ["Role", "RoleBinding"]
    (role,) = [d for d in load(MESH_CA) if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == RuntimeSettings().namespace


def test_bindings_tie_the_roles_to_the_service_account() -> None:
    docs = [d for path in sorted(RBAC.glob("*.yaml")) for d in load(path)]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    roles = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"].endswith("Role")}
    bindings = [d for d in docs if d["kind"].endswith("RoleBinding")]
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == roles
    for binding in bindings:
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": account["metadata"]["name"],
                "namespace": account["metadata"]["namespace"],
            }
        ]
