"""What the operator's cluster tests share: settings that point an in-process operator at the
session's control plane, the example MeshServices, reading conditions, EndpointSlices written
as the EndpointSlice controller writes them, and pods made Ready as a kubelet reports them.

No pods run here (no nodes): the tests play the kubelet (``KubeCluster.set_pods_ready``) so
the real ReplicaSet and Deployment controllers count pods available, and write EndpointSlices
themselves, so each endpoint's state is the test's choice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import yaml

from grpcmesh_control.cluster.controller import ApplyStrategy, Operator, RuntimeSettings
from tests.cluster.kube import KubeCluster, wait_until
from tests.loopback import free_port
from tests.shared import REPO

__all__ = [
    "NEVER",
    "condition",
    "contains",
    "example",
    "mesh_services_removed",
    "names",
    "operator_settings",
    "settled",
    "slice_of",
    "wait_condition",
    "wait_names",
    "wait_status",
]

EXAMPLES = REPO / "manifests" / "examples"
NEVER = 3600.0  # no periodic resync: only events move the status

Obj = dict[str, Any]


def operator_settings(kube: KubeCluster, **overrides: Any) -> RuntimeSettings:
    """An operator as deployed (server-side apply), on loopback, with the admin kubeconfig."""
    values: dict[str, Any] = {
        "kubeconfig": kube.kubeconfig,
        "apply_strategy": ApplyStrategy.SERVER_SIDE,
        "xds_host": "127.0.0.1",
        "xds_port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "liveness_endpoint": f"http://127.0.0.1:{free_port()}/healthz",
    }
    return RuntimeSettings(**(values | overrides))


def example(name: str) -> Obj:
    """An example MeshService as a user applies it (no namespace: ``kubectl -n`` sets it)."""
    doc = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def condition(body: Obj | None, kind: str) -> tuple[str, str] | None:
    for c in ((body or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return c["status"], c["reason"]
    return None


def names(kube: KubeCluster, resource: str, namespace: str, selector: str = "") -> set[str]:
    return {i["metadata"]["name"] for i in kube.items(resource, namespace, selector)}


OWNED = "app.kubernetes.io/managed-by=grpcmesh-operator"


def wait_names(
    kube: KubeCluster, resource: str, namespace: str, want: set[str], timeout: float = 30.0
) -> None:
    """The operator's objects of ``resource`` in ``namespace`` are exactly ``want``."""
    wait_until(
        lambda: names(kube, resource, namespace, OWNED) == want,
        f"{resource} in {namespace} == {sorted(want)}",
        timeout,
    )


def wait_status(
    kube: KubeCluster, namespace: str, name: str, what: str, check: Any, timeout: float = 30.0
) -> Obj:
    def matches() -> Obj | None:
        body = kube.get("meshservice", name, namespace)
        return body if body is not None and check(body) else None

    found: Obj = wait_until(matches, f"{namespace}/{name}: {what}", timeout)
    return found


def wait_condition(
    kube: KubeCluster,
    namespace: str,
    name: str,
    kind: str,
    want: tuple[str, str],
    timeout: float = 30.0,
) -> Obj:
    return wait_status(
        kube, namespace, name, f"{kind}={want}", lambda b: condition(b, kind) == want, timeout
    )


def slice_of(
    service: str, *endpoints: tuple[str, bool, bool], port: int = 15006, suffix: str = "abcde"
) -> Obj:
    """An EndpointSlice of ``service`` as the controller writes it: ``(ip, ready,
    terminating)`` each. Its own manager label, so the real controller leaves it alone."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-{suffix}",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "tests.grpcmesh.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready, "terminating": terminating}}
            for ip, ready, terminating in endpoints
        ],
    }


@contextlib.contextmanager
def mesh_services_removed(kube: KubeCluster, namespace: str, operator: Operator) -> Iterator[None]:
    """Delete the namespace's MeshServices after the block and wait until ``operator`` has
    forgotten them: service names are mesh-wide, so the next test of a shared operator may
    reuse them."""
    try:
        yield
    finally:
        kube.kubectl("delete", "meshservices", "--all", "-n", namespace, "--wait=true")
        wait_until(
            lambda: not any(ns == namespace for ns, _ in operator.reconciler.known()),
            f"the operator to forget {namespace}'s MeshServices",
            30.0,
        )


def contains(got: Any, want: Any, path: str = "") -> list[str]:
    """Where ``got`` differs from ``want`` ignoring what ``want`` does not say (the API
    server's defaults): each mismatch as ``path: got != want``."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: {got!r} is not a mapping"]
        return [m for k, v in want.items() for m in contains(got.get(k), v, f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got!r} != {want!r}"]
        return [
            m
            for i, (g, w) in enumerate(zip(got, want, strict=True))
            for m in contains(g, w, f"{path}[{i}]")
        ]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


def settled(operator: Operator, quiet: float = 1.0, timeout: float = 20.0) -> None:
    """Wait until ``operator`` has not reconciled for ``quiet`` seconds (kopf re-handles a new
    object as its own patches come back), so what follows has one possible cause."""

    def count() -> float:
        return sum(
            sample.value
            for metric in operator.operator_metrics.reconciles.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )

    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"the operator kept reconciling for {timeout} s"
        time.sleep(0.1)
        if (now := count()) != last:
            last, since = now, time.monotonic()
