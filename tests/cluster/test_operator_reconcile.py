"""The operator on the real control plane: what it writes for a MeshService (server-side
apply, owner references), the status it derives, updates and pruning, deletion by the garbage
collector, drift repair and the Events it posts.

One operator serves the whole module (each test has its own namespace, and deletes its
MeshServices before the next test, as service names are mesh-wide).
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from grpcmesh_control.cluster.controller import Operator
from grpcmesh_control.cluster.objects import OperatorSettings, OwnerRef, desired_objects
from grpcmesh_control.mesh.model import parse_mesh_service
from tests.chart.chart import render
from tests.cluster.kube import KubeCluster, wait_until
from tests.cluster.operator_harness import (
    condition,
    contains,
    example,
    mesh_services_removed,
    names,
    operator_settings,
    settled,
    slice_of,
    wait_condition,
    wait_names,
    wait_status,
)
from tests.operator_thread import serving

SERVICES = {"payments", "payments-v1", "payments-v2"}
CONFIG_MAPS = {"payments-config", "payments-envoy-bootstrap"}
DEPLOYMENTS = {"payments-v1", "payments-v2"}
RESYNC = 1.0  # short, so a test can wait out a resync pass
DESCRIPTOR_SET = "grpcmesh.io/descriptor-set"


@pytest.fixture(scope="module")
def operator(kube: KubeCluster) -> Iterator[Operator]:
    # This operator watches every namespace. Earlier modules delete theirs without waiting;
    # until their MeshServices and descriptor sets are gone it would reconcile those too (so
    # `settled` never comes) and list the shop's services in its catalog. CI saw both.
    wait_until(
        lambda: None if left_in_terminating_namespaces(kube) else True,
        "earlier modules' namespaces to drop their MeshServices and descriptor sets",
        timeout=120,
    )
    with serving(operator_settings(kube, resync_interval=RESYNC)) as op:
        yield op


def left_in_terminating_namespaces(kube: KubeCluster) -> list[str]:
    terminating = {
        n["metadata"]["name"]
        for n in kube.items("namespaces")
        if (n.get("status") or {}).get("phase") == "Terminating"
    }
    found = kube.items("meshservices") + kube.items("configmaps", selector=DESCRIPTOR_SET)
    return [
        f"{o['kind']} {o['metadata']['namespace']}/{o['metadata']['name']}"
        for o in found
        if o["metadata"]["namespace"] in terminating
    ]


@pytest.fixture
def ns(kube: KubeCluster, namespace: str, operator: Operator) -> Iterator[str]:
    with mesh_services_removed(kube, namespace, operator):
        yield namespace


def events(kube: KubeCluster, namespace: str) -> list[dict[str, Any]]:
    return kube.items("events", namespace, "")


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status), response.read().decode()


def test_create_writes_owned_objects_and_status(
    kube: KubeCluster, ns: str, operator: Operator
) -> None:
    """A new MeshService gets what ``desired_objects`` renders, written by server-side apply
    and owned by it (controller reference), no finalizer, and a status that follows the
    rollout: Progressing -> NoReadyEndpoints -> AwaitingAck (no sidecar connected)."""
    kube.apply([example("payments")], namespace=ns)
    wait_names(kube, "services", ns, SERVICES)
    wait_names(kube, "configmaps", ns, CONFIG_MAPS)
    wait_names(kube, "deployments", ns, DEPLOYMENTS)

    body = kube.get("meshservice", "payments", ns)
    uid = body["metadata"]["uid"]
    expected = desired_objects(
        parse_mesh_service(body), namespace=ns, owner=OwnerRef.of(body), settings=OperatorSettings()
    )
    assert {o["kind"] for o in expected} == {"Service", "ConfigMap", "ServiceAccount", "Deployment"}
    for want in expected:
        got = kube.get(want["kind"].lower(), want["metadata"]["name"], ns)
        label = f"{want['kind']}/{want['metadata']['name']}"
        assert got is not None, label
        assert got["metadata"]["labels"] == want["metadata"]["labels"], label
        assert got["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "grpcmesh.io/v1alpha1",
                "blockOwnerDeletion": True,
                "controller": True,
                "kind": "MeshService",
                "name": "payments",
                "uid": uid,
            }
        ], label
        for field in ("spec", "data"):
            assert not contains(got.get(field), want.get(field)), (
                label,
                contains(got.get(field), want.get(field)),
            )
        managed = kube.kubectl(
            "get", want["kind"].lower(), want["metadata"]["name"], "-n", ns,
            "--show-managed-fields", "-o", "jsonpath={.metadata.managedFields}",
        )  # fmt: skip
        managers = {(m["manager"], m["operation"]) for m in json.loads(managed)}
        assert ("grpcmesh-operator", "Apply") in managers, label

    body = wait_condition(kube, ns, "payments", "Registered", ("True", "Registered"))
    assert condition(body, "Ready") == ("False", "Progressing")
    assert not body["metadata"].get("finalizers")
    assert "kopf" not in body["status"]
    generation = body["metadata"]["generation"]
    assert body["status"]["observedGeneration"] == generation
    assert {c["observedGeneration"] for c in body["status"]["conditions"]} == {generation}

    kube.set_pods_ready(ns, "grpcmesh.io/service=payments")  # the real controllers count them
    wait_condition(kube, ns, "payments", "Ready", ("False", "NoReadyEndpoints"))

    kube.apply([slice_of("payments-v1", ("127.0.0.1", True, False))], namespace=ns)
    body = wait_condition(kube, ns, "payments", "Ready", ("False", "AwaitingAck"))
    assert body["status"]["endpoints"] == {"ready": 1, "total": 1}
    registry = operator.publisher.registry
    assert registry is not None and registry.service("payments") is not None

    reconciled = [e for e in events(kube, ns) if e["reason"] == "Reconciled"]
    assert reconciled, "no Reconciled event"
    involved = reconciled[0]["involvedObject"]
    assert (involved["kind"], involved["name"], involved["uid"]) == ("MeshService", "payments", uid)

    assert operator.metrics_port is not None
    status, text = http_get(f"http://127.0.0.1:{operator.metrics_port}/metrics")
    assert status == 200, text
    assert 'grpcmesh_operator_reconciles_total{result="ok"}' in text
    assert "grpcmesh_snapshot_rebuilds_total" in text  # the control plane's, same page
    assert operator.settings.liveness_endpoint is not None
    assert http_get(operator.settings.liveness_endpoint)[0] == 200


def test_updates_reach_objects_and_snapshot(kube: KubeCluster, ns: str, operator: Operator) -> None:
    """Replicas, config, traffic policy and a removed version: objects follow, the removed
    version's Deployment and Service are pruned (and the garbage collector takes their
    ReplicaSets), the registry sees the new policy, and the status the new generation."""
    doc = example("payments")
    kube.apply([doc], namespace=ns)
    wait_names(kube, "deployments", ns, DEPLOYMENTS)
    doc["spec"] |= {
        "replicas": 3,
        "config": {"currency": "EUR"},
        "versions": [{"name": "v1", "weight": 100}],
        "trafficPolicy": {"timeout": "7s"},
    }
    kube.apply([doc], namespace=ns)
    wait_names(kube, "deployments", ns, {"payments-v1"})
    wait_names(kube, "services", ns, {"payments", "payments-v1"})

    def followed() -> bool:
        deployment = kube.get("deployment", "payments-v1", ns)
        config = kube.get("configmap", "payments-config", ns)
        registry = operator.publisher.registry
        svc = registry.service("payments") if registry is not None else None
        return (
            deployment is not None
            and deployment["spec"]["replicas"] == 3
            and config is not None
            and "currency: EUR" in config["data"]["config.yaml"]
            and svc is not None
            and svc.traffic_policy.timeout == timedelta(seconds=7)
        )

    wait_until(followed, "objects and snapshot to follow the update")
    body = wait_status(
        kube,
        ns,
        "payments",
        "status of generation 2",
        lambda b: b["status"].get("observedGeneration") == 2,
    )
    assert {c["observedGeneration"] for c in body["status"]["conditions"]} == {2}
    wait_until(
        lambda: Counter(e["reason"] for e in events(kube, ns))["Pruned"] == 2, "two Pruned events"
    )
    wait_until(
        lambda: names(kube, "replicasets", ns, "grpcmesh.io/version=v2") == set(),
        "the pruned Deployment's ReplicaSet collected",
    )


def test_delete_is_left_to_the_garbage_collector(
    kube: KubeCluster, ns: str, operator: Operator
) -> None:
    """No finalizer: the delete completes at once, the garbage collector deletes the owned
    objects by their owner references, and the operator forgets the service and recreates
    nothing (not even from the owned objects' DELETED events, nor at its resync)."""
    kube.apply([example("payments")], namespace=ns)
    wait_names(kube, "deployments", ns, DEPLOYMENTS)
    kube.kubectl("delete", "meshservice", "payments", "-n", ns, "--timeout=10s")
    assert kube.get("meshservice", "payments", ns) is None

    def forgotten() -> bool:
        registry = operator.publisher.registry
        return (
            registry is not None
            and registry.service("payments") is None
            and (ns, "payments") not in operator.reconciler.known()
        )

    wait_until(forgotten, "the operator to forget payments")
    for resource in ("deployments", "services", "configmaps", "serviceaccounts"):
        # The collector resolves an owner's kind by discovery, refreshed every 30 s: on a
        # control plane younger than that, our CRD's objects wait for that refresh.
        wait_names(kube, resource, ns, set(), timeout=60.0)
    settled(operator, quiet=2 * RESYNC)  # at least one resync pass
    for resource in ("deployments", "services", "configmaps", "serviceaccounts"):
        assert names(kube, resource, ns, "grpcmesh.io/service=payments") == set(), resource


def test_the_service_account_follows_the_workload(kube: KubeCluster, ns: str) -> None:
    """A MeshService with a workload gets its own ServiceAccount (its identity, token not
    mounted), recreated when deleted by hand; without a workload there are no pods to run
    under it, and it is pruned."""
    doc = example("payments")
    kube.apply([doc], namespace=ns)
    wait_names(kube, "serviceaccounts", ns, {"payments"})
    account = kube.get("serviceaccount", "payments", ns)
    assert account["automountServiceAccountToken"] is False
    pod = kube.get("deployment", "payments-v1", ns)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "payments"
    assert pod["automountServiceAccountToken"] is False
    # Deleted by hand, it comes back (the pods could not be created without it).
    before = account["metadata"]["uid"]
    kube.kubectl("delete", "serviceaccount", "payments", "-n", ns)
    wait_until(
        lambda: (
            (kube.get("serviceaccount", "payments", ns) or {"metadata": {"uid": before}})[
                "metadata"
            ]["uid"]
            != before
        ),
        "the ServiceAccount recreated",
    )
    del doc["spec"]["workload"]
    doc["spec"]["versions"][1].pop("image")
    kube.apply([doc], namespace=ns)
    wait_names(kube, "deployments", ns, set())
    wait_names(kube, "serviceaccounts", ns, set())


def test_an_owned_object_deleted_by_hand_is_recreated(kube: KubeCluster, ns: str) -> None:
    kube.apply([example("payments")], namespace=ns)
    wait_names(kube, "deployments", ns, DEPLOYMENTS)
    wait_names(kube, "configmaps", ns, CONFIG_MAPS)
    before = kube.get("deployment", "payments-v1", ns)["metadata"]["uid"]
    kube.kubectl("delete", "deployment", "payments-v1", "-n", ns)
    kube.kubectl("delete", "configmap", "payments-envoy-bootstrap", "-n", ns)
    wait_names(kube, "configmaps", ns, CONFIG_MAPS)
    wait_until(
        lambda: (
            (kube.get("deployment", "payments-v1", ns) or {"metadata": {"uid": before}})[
                "metadata"
            ]["uid"]
            != before
        ),
        "payments-v1 recreated",
    )
    wait_names(kube, "deployments", ns, DEPLOYMENTS)


def test_an_invalid_spec_is_reported_and_keeps_the_objects(kube: KubeCluster, ns: str) -> None:
    kube.apply([example("payments")], namespace=ns)
    wait_names(kube, "deployments", ns, DEPLOYMENTS)
    wait_condition(kube, ns, "payments", "Registered", ("True", "Registered"))
    broken = {"spec": {"grpc": {"port": 15000}}}  # the sidecar's admin port
    kube.kubectl(
        "patch", "meshservice", "payments", "-n", ns, "--type=merge", "-p", json.dumps(broken)
    )
    body = wait_condition(kube, ns, "payments", "Degraded", ("True", "InvalidSpec"))
    degraded = next(c for c in body["status"]["conditions"] if c["type"] == "Degraded")
    assert "15000" in degraded["message"]
    assert degraded["observedGeneration"] == body["metadata"]["generation"]
    assert names(kube, "deployments", ns, "grpcmesh.io/service=payments") == DEPLOYMENTS
    wait_until(
        lambda: any(e["reason"] == "InvalidSpec" for e in events(kube, ns)), "an InvalidSpec event"
    )


def test_the_method_catalog_follows_descriptor_set_config_maps(
    kube: KubeCluster, ns: str, operator: Operator
) -> None:
    """The chart's descriptor-set ConfigMap, applied and deleted while the operator runs,
    adds and removes the shop's gRPC services in its method catalog (watched, not listed
    once), and their proto files, which reflection at the ingress answers from."""
    release = f"cat-{ns.rsplit('-', 1)[-1]}"
    rendered = render({}, release=release, namespace=ns)
    (descriptors,) = [
        o
        for o in rendered
        if o["kind"] == "ConfigMap"
        and "grpcmesh.io/descriptor-set" in o["metadata"].get("labels", {})
    ]
    # The catalog is mesh-wide: an earlier module's namespace still being deleted can hold a
    # descriptor set of the shop for a while (CI saw one; namespace deletion is asynchronous).
    wait_until(
        lambda: "grpcmesh.shop.v1.PaymentService" not in operator.catalog.service_names,
        "no shop descriptor set left from earlier modules",
        timeout=90,
    )
    kube.apply([descriptors], namespace=ns)
    wait_until(
        lambda: "grpcmesh.shop.v1.PaymentService" in operator.catalog.service_names,
        "the shop's services in the catalog",
    )
    files = {f.name for f in operator.protos.files}
    assert {"grpcmesh/shop/v1/payments.proto", "grpcmesh/shop/v1/common.proto"} <= files
    kube.kubectl("delete", "configmap", descriptors["metadata"]["name"], "-n", ns)
    wait_until(
        lambda: "grpcmesh.shop.v1.PaymentService" not in operator.catalog.service_names,
        "the shop's services gone from the catalog",
    )
    assert operator.protos.files == ()
