"""The operator with the App Mesh provider on the real control plane, against App Mesh's own
published CRDs (../shared/contracts/appmesh): the API server validates what it writes, and
per-method retries come from the descriptor sets it watches."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from grpcmesh_control.cluster.controller import Operator
from grpcmesh_control.cluster.objects import Provider
from tests.cluster.kube import KubeCluster, wait_until
from tests.cluster.operator_harness import example, mesh_services_removed, operator_settings
from tests.operator_thread import serving
from tests.shared import shared_path


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


def _descriptor_set(package: str) -> str:
    """``package.Reviews`` with an IDEMPOTENT ``GetReview`` and a plain ``PostReview``."""
    file = descriptor_pb2.FileDescriptorProto(name="reviews.proto", package=package)
    service = file.service.add(name="Reviews")
    for method, level in (
        ("GetReview", descriptor_pb2.MethodOptions.IDEMPOTENT),
        ("PostReview", descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN),
    ):
        rpc = service.method.add(name=method, input_type=".x.In", output_type=".x.Out")
        rpc.options.idempotency_level = level
    data = descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()
    return base64.b64encode(data).decode()


def _routes(kube: KubeCluster, ns: str) -> list[dict[str, Any]]:
    router = kube.get("virtualrouter", "reviews", ns)
    return [] if router is None else [r["grpcRoute"] for r in router["spec"]["routes"]]


def test_virtual_router_retries_follow_the_descriptor_sets(
    kube: KubeCluster, ns: str, operator: Operator
) -> None:
    # A gRPC service only this test defines: the catalog's other sets cannot leak in.
    grpc_service = f"{ns.replace('-', '')}.v1.Reviews"
    reviews = example("catalog")
    reviews["metadata"]["name"] = "reviews"
    reviews["spec"]["grpc"]["services"] = [grpc_service]
    reviews["spec"]["workload"]["image"] = "example.com/reviews:1"
    kube.apply([reviews], namespace=ns)
    # Without the protos no method is known to be idempotent: nothing is retried.
    routes = wait_until(lambda: _routes(kube, ns), "the reviews VirtualRouter")
    assert all("retryPolicy" not in r for r in routes), routes

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "reviews-api", "labels": {"grpcmesh.io/descriptor-set": "true"}},
        "binaryData": {"api.binpb": _descriptor_set(grpc_service.rsplit(".", 1)[0])},
    }
    kube.apply([config_map], namespace=ns)
    retried = wait_until(
        lambda: [r for r in _routes(kube, ns) if "retryPolicy" in r],
        "a retry policy on the IDEMPOTENT method",
    )
    assert [(r["match"]["serviceName"], r["match"].get("methodName")) for r in retried] == [
        (grpc_service, "GetReview")
    ]
    assert retried[0]["retryPolicy"]["grpcRetryEvents"]


def test_virtual_nodes_carry_mtls_as_the_api_server_stores_them(
    kube: KubeCluster, ns: str, operator: Operator
) -> None:
    # PERMISSIVE listener, and a backend whose identity the client policy pins.
    caller = example("catalog")
    caller["metadata"]["name"] = "reviews"
    caller["spec"]["grpc"]["services"] = [f"{ns.replace('-', '')}.v1.Reviews"]
    caller["spec"]["workload"]["image"] = "example.com/reviews:1"
    caller["spec"]["mtls"] = {"mode": "PERMISSIVE"}
    caller["spec"]["backends"] = [{"name": "catalog"}]
    kube.apply([example("catalog"), caller], namespace=ns)
    nodes = wait_until(
        lambda: kube.items("virtualnode", ns, selector="grpcmesh.io/service=reviews"),
        "the reviews VirtualNodes",
    )
    td = operator_settings(kube).render.identity.trust_domain
    for node in nodes:
        [listener] = node["spec"]["listeners"]
        assert listener["tls"] == {
            "certificate": {"sds": {"secretName": f"spiffe://{td}/ns/{ns}/sa/reviews"}},
            "mode": "PERMISSIVE",
            "validation": {"trust": {"sds": {"secretName": f"spiffe://{td}"}}},
        }
        [backend] = node["spec"]["backends"]
        tls = backend["virtualService"]["clientPolicy"]["tls"]
        assert tls["enforce"] is True
        assert tls["validation"]["subjectAlternativeNames"]["match"]["exact"] == [
            f"spiffe://{td}/ns/{ns}/sa/catalog"
        ]
