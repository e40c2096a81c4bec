"""The operator with the App Mesh provider on the real control plane, against App Mesh's own
published CRDs (../shared/contracts/appmesh): the API server validates what it writes, and
per-method retries come from the descriptor sets it watches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from grpcmesh_control.k8s import Provider
from grpcmesh_control.k8s_runtime import Operator
from tests.chart.chart import render
from tests.cluster.kube import KubeCluster, wait_until
from tests.cluster.operator_harness import example, mesh_services_removed, operator_settings
from tests.operator_thread import serving
from tests.shared import shared_path

CATALOG_SERVICE = "grpcmesh.shop.v1.CatalogService"


@pytest.fixture(scope="module")
def operator(kube: KubeCluster) -> Iterator[Operator]:
    kube.kubectl("apply", "--server-side", "-f", str(shared_path("contracts", "appmesh")))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    settings = operator_settings(kube)
    settings = replace(settings, render=replace(settings.render, provider=Provider.APPMESH))
    with serving(settings) as op:
        yield op


@pytest.fixture
def ns(kube: KubeCluster, namespace: str, operator: Operator) -> Iterator[str]:
    with mesh_services_removed(kube, namespace, operator):
        yield namespace


def _routes(kube: KubeCluster, ns: str) -> list[dict[str, Any]]:
    router = kube.get("virtualrouter", "catalog", ns)
    return [] if router is None else [r["grpcRoute"] for r in router["spec"]["routes"]]


def test_virtual_router_retries_follow_the_descriptor_sets(
    kube: KubeCluster, ns: str, operator: Operator
) -> None:
    kube.apply([example("catalog")], namespace=ns)
    # Without the protos no method is known to be idempotent: nothing is retried.
    routes = wait_until(lambda: _routes(kube, ns), "the catalog VirtualRouter")
    assert all("retryPolicy" not in r for r in routes), routes

    (descriptors,) = [
        o
        for o in render({}, release=f"am-{ns[-6:]}", namespace=ns)
        if "grpcmesh.io/descriptor-set" in (o["metadata"].get("labels") or {})
    ]
    kube.apply([descriptors], namespace=ns)
    routes = wait_until(
        lambda: [r for r in _routes(kube, ns) if "retryPolicy" in r],
        "retries on the catalog's NO_SIDE_EFFECTS methods",
        timeout=60,
    )
    assert {r["match"].get("methodName") for r in routes} == {"GetProduct", "ListProducts"}
    assert all(r["match"]["serviceName"] == CATALOG_SERVICE for r in routes)
    assert all(r["retryPolicy"]["grpcRetryEvents"] for r in routes)
    kube.kubectl("delete", "configmap", descriptors["metadata"]["name"], "-n", ns)
