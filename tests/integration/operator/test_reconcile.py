"""Reconciliation against kmock: owned objects, status, updates, deletes, drift, restarts.

kmock has no controllers: the tests play the Deployment controller (patching a Deployment's
status) and the EndpointSlice controller (creating slices) where a step needs them.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import aiohttp

from grpcmesh_control.k8s import OperatorSettings, OwnerRef, desired_objects
from grpcmesh_control.k8s_runtime import Operator
from grpcmesh_control.model import parse_mesh_service
from tests.integration.operator.conftest import Api, example, operator_settings, running
from tests.loopback import poll

SERVICES = {"payments", "payments-v1", "payments-v2"}
CONFIG_MAPS = {"payments-config", "payments-envoy-bootstrap"}
DEPLOYMENTS = {"payments-v1", "payments-v2"}


def condition(body: dict[str, Any] | None, kind: str) -> tuple[str, str] | None:
    for c in ((body or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return c["status"], c["reason"]
    return None


async def names(api: Api, plural: str) -> set[str]:
    return {item["metadata"]["name"] for item in await api.list(plural)}


async def wait_condition(api: Api, name: str, kind: str, want: tuple[str, str]) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await api.get("meshservices", name)
        return body if condition(body, kind) == want else None

    return await poll(check, f"{name} {kind}={want}")


async def wait_names(api: Api, plural: str, want: set[str]) -> None:
    async def check() -> bool:
        return await names(api, plural) == want

    await poll(check, f"{plural} == {sorted(want)}")


def slice_of(service: str, *endpoints: tuple[str, bool, bool], port: int = 15006) -> dict[str, Any]:
    """An EndpointSlice as the controller writes it: ``(ip, ready, terminating)`` each."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-abcde",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready, "terminating": terminating}}
            for ip, ready, terminating in endpoints
        ],
    }


async def test_create_writes_owned_objects_and_status(api: Api, operator: Operator) -> None:
    """A new MeshService gets exactly what ``desired_objects`` renders, each owned by it
    (controller reference: GC deletes them with it), no finalizer, and a status that follows
    the rollout: Progressing -> NoReadyEndpoints -> AwaitingAck (no sidecar connected)."""
    doc = example("payments")
    await api.create("meshservices", doc)
    await wait_names(api, "services", SERVICES)
    await wait_names(api, "configmaps", CONFIG_MAPS)
    await wait_names(api, "deployments", DEPLOYMENTS)

    expected = desired_objects(
        parse_mesh_service(doc),
        namespace="default",
        owner=OwnerRef.of(doc),
        settings=OperatorSettings(),
    )
    for want in expected:
        plural = want["kind"].lower() + "s"
        got = await api.get(plural, want["metadata"]["name"])
        assert got is not None
        assert got["metadata"]["labels"] == want["metadata"]["labels"]
        assert got["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "grpcmesh.io/v1alpha1",
                "blockOwnerDeletion": True,
                "controller": True,
                "kind": "MeshService",
                "name": "payments",
                "uid": doc["metadata"]["uid"],
            }
        ]
        for field in ("spec", "data"):
            assert got.get(field) == want.get(field), f"{plural}/{want['metadata']['name']}"

    body = await wait_condition(api, "payments", "Registered", ("True", "Registered"))
    assert condition(body, "Ready") == ("False", "Progressing")
    assert not body["metadata"].get("finalizers")
    assert "kopf" not in body["status"]

    for name in DEPLOYMENTS:  # play the Deployment controller
        await api.patch(
            "deployments", name, {"status": {"updatedReplicas": 1, "availableReplicas": 1}}
        )
    await wait_condition(api, "payments", "Ready", ("False", "NoReadyEndpoints"))

    await api.create("endpointslices", slice_of("payments-v1", ("10.0.0.1", True, False)))
    body = await wait_condition(api, "payments", "Ready", ("False", "AwaitingAck"))
    assert body["status"]["endpoints"] == {"ready": 1, "total": 1}
    registry = operator.publisher.registry
    assert registry is not None and registry.service("payments") is not None

    reasons = {e["reason"] for e in await api.list("events")}
    assert "Reconciled" in reasons

    assert operator.metrics_port is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{operator.metrics_port}/metrics") as response,
    ):
        text = await response.text()
    assert 'grpcmesh_operator_reconciles_total{result="ok"}' in text
    assert "grpcmesh_snapshot_rebuilds_total" in text  # the control plane's, same page
    assert operator.settings.liveness_endpoint is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(operator.settings.liveness_endpoint) as response,
    ):
        assert response.status == 200


async def test_updates_reach_objects_and_snapshot(api: Api, operator: Operator) -> None:
    """Replicas, config, traffic policy and a removed version: objects follow, the removed
    version's Deployment and Service are pruned, and the registry sees the new policy."""
    await api.create("meshservices", example("payments"))
    await wait_names(api, "deployments", DEPLOYMENTS)

    await api.patch(
        "meshservices",
        "payments",
        {
            "spec": {
                "replicas": 3,
                "config": {"currency": "EUR"},
                "versions": [{"name": "v1", "weight": 100}],
                "trafficPolicy": {"timeout": "7s"},
            }
        },
    )
    await wait_names(api, "deployments", {"payments-v1"})
    await wait_names(api, "services", {"payments", "payments-v1"})

    async def followed() -> bool:
        deployment = await api.get("deployments", "payments-v1")
        config = await api.get("configmaps", "payments-config")
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

    await poll(followed, "objects and snapshot to follow the update")
    reasons = Counter(e["reason"] for e in await api.list("events"))
    assert reasons["Pruned"] == 2


async def test_delete_is_left_to_the_garbage_collector(api: Api, operator: Operator) -> None:
    """No finalizer: the delete completes at once, even though the operator runs. The owned
    objects go by their owner references (kmock has no GC, so they stay here); the operator
    forgets the service and does not recreate anything for it."""
    await api.create("meshservices", example("payments"))
    await wait_names(api, "deployments", DEPLOYMENTS)
    await api.delete("meshservices", "payments")
    assert await api.get("meshservices", "payments") is None

    async def forgotten() -> bool:
        registry = operator.publisher.registry
        return registry is not None and registry.service("payments") is None

    await poll(forgotten, "the registry to drop payments")
    await api.delete("deployments", "payments-v1")
    for _ in range(3):  # several resync periods
        await poll(lambda: _after(0.4), "a pause")
    assert await names(api, "deployments") == {"payments-v2"}
    assert operator.reconciler.known() == []


async def test_an_owned_object_deleted_by_hand_is_recreated(api: Api, operator: Operator) -> None:
    await api.create("meshservices", example("payments"))
    await wait_names(api, "deployments", DEPLOYMENTS)
    await api.delete("deployments", "payments-v1")
    await api.delete("configmaps", "payments-envoy-bootstrap")
    await wait_names(api, "deployments", DEPLOYMENTS)
    await wait_names(api, "configmaps", CONFIG_MAPS)


async def test_a_restarted_operator_converges_without_duplicates(api: Api) -> None:
    """Stopped mid-way and changed while down: the next operator resumes, applies the change
    and prunes, and every object exists once."""
    settings = operator_settings(api)
    async with running(settings):
        await api.create("meshservices", example("payments"))
        await api.create("meshservices", example("catalog"))
        await wait_names(api, "deployments", DEPLOYMENTS | {"catalog-v1"})

    await api.patch("meshservices", "payments", {"spec": {"replicas": 2}})
    await api.delete("deployments", "catalog-v1")  # drift while nobody watches

    async with running(operator_settings(api)):
        await wait_names(api, "deployments", DEPLOYMENTS | {"catalog-v1"})

        async def scaled() -> bool:
            found = [await api.get("deployments", n) for n in DEPLOYMENTS]
            return all(d is not None and d["spec"]["replicas"] == 2 for d in found)

        await poll(scaled, "payments scaled to 2 after the restart")
        await wait_condition(api, "catalog", "Registered", ("True", "Registered"))
        for plural in ("services", "configmaps", "deployments", "meshservices"):
            listed = [i["metadata"]["name"] for i in await api.list(plural)]
            assert len(listed) == len(set(listed)), f"duplicate {plural}: {listed}"


async def test_an_invalid_spec_is_reported_and_keeps_the_objects(
    api: Api, operator: Operator
) -> None:
    await api.create("meshservices", example("payments"))
    await wait_names(api, "deployments", DEPLOYMENTS)
    broken = copy.deepcopy({"spec": {"grpc": {"port": 15000}}})  # the sidecar's admin port
    await api.patch("meshservices", "payments", broken)
    body = await wait_condition(api, "payments", "Degraded", ("True", "InvalidSpec"))
    assert "15000" in body["status"]["conditions"][0]["message"]
    assert await names(api, "deployments") == DEPLOYMENTS


async def _after(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return True


async def test_service_monitors_asked_for_without_their_crd_are_skipped(api: Api) -> None:
    """GRPCMESH_SERVICE_MONITOR on, but no Prometheus Operator in the cluster: the operator
    finds no CRD at start and renders none, instead of every MeshService failing to apply."""
    settings = operator_settings(api)
    settings = replace(settings, render=replace(settings.render, service_monitor_crd=True))
    async with running(settings) as op:
        assert not op.settings.render.service_monitor_crd
        await api.create("meshservices", example("payments"))
        await wait_names(api, "deployments", DEPLOYMENTS)
        body = await wait_condition(api, "payments", "Registered", ("True", "Registered"))
        assert condition(body, "Degraded") == ("False", "AsExpected")


async def test_service_monitors_stay_on_when_their_crd_exists(api: Api) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "names": {"plural": "servicemonitors"}},
    }
    await api.create("customresourcedefinitions", crd)
    settings = operator_settings(api)
    settings = replace(settings, render=replace(settings.render, service_monitor_crd=True))
    async with running(settings) as op:
        assert op.settings.render.service_monitor_crd


async def test_the_first_snapshot_holds_the_whole_mesh(api: Api) -> None:
    """Before its ADS server listens, a (re)started operator lists MeshServices and
    EndpointSlices: reconnecting sidecars get every service with its endpoints at once, not
    whatever kopf's watches have replayed yet (which would empty their clusters)."""
    for name in ("payments", "orders"):
        await api.create("meshservices", example(name))
    await api.create("endpointslices", slice_of("payments-v1", ("10.0.0.1", True, False)))
    seen: dict[str, Any] = {}

    def at_listen(op: Operator) -> None:  # the operator's thread, before kopf starts
        registry = op.publisher.registry
        seen["services"] = sorted(s.name for s in registry.services) if registry else []
        seen["endpoints"] = {
            name: [e.address for e in endpoints]
            for name, endpoints in op.publisher.inputs.endpoint_map.items()
        }

    async with running(operator_settings(api), on_ready=at_listen):
        pass
    assert seen["services"] == ["orders", "payments"]
    assert ["10.0.0.1"] in seen["endpoints"].values()
