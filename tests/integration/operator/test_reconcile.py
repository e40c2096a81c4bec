"""Reconciliation against kmock: owned objects, status, updates, deletes, drift, restarts.

kmock has no controllers: the tests play the Deployment controller (patching a Deployment's
status) and the EndpointSlice controller (creating slices) where a step needs them.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from grpcmesh_control.k8s_runtime import Operator
from tests.integration.operator.conftest import Api, example, operator_settings
from tests.loopback import poll
from tests.operator_thread import running

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
