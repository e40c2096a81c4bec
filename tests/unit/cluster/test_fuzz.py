"""Fuzzed MeshService documents never crash the operator's core: each is either rejected with
``InvalidResource`` (naming fields), or rendered into objects that all validate, with pods that
fit the restricted profile; and the validating webhook answers every one of them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from grpcmesh_control.cluster.objects import (
    OperatorSettings,
    Provider,
    desired_objects,
    read_only_root_violations,
    restricted_violations,
    validate_admission,
)
from grpcmesh_control.mesh.errors import InvalidResource
from grpcmesh_control.mesh.model import MeshService, MethodCatalog, parse_mesh_service

from .checks import validate_object
from .conftest import owner_of

SETTINGS = (
    OperatorSettings(service_monitor_crd=True),
    OperatorSettings(provider=Provider.APPMESH, service_monitor_crd=True),
)
# Kubernetes versions: one is enough here; the examples are checked against both ends.
VERSIONS = ("1.31.0",)

dns_label = st.from_regex(r"\A[a-z]([-a-z0-9]{0,20}[a-z0-9])?\Z")
version_name = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?\Z")
grpc_service = st.from_regex(r"\A[a-z]{1,6}\.v[0-9]\.[A-Z][A-Za-z]{0,10}\Z")
duration = st.sampled_from(["0s", "250ms", "1s", "1.5s", "1m30s", "2h"])
bad_duration = st.sampled_from(["", "1", "-1s", "1d", "s", "1.s"])
cpu = st.sampled_from(["50m", "100m", "1", "1.5", "2", 1, 2])
memory = st.sampled_from(["64Mi", "128Mi", "1Gi", "1G", "500M", "1024", 1048576])
# Any port, reserved ones included: those must be refused at render, not crash it.
port = st.one_of(st.integers(1, 65535), st.sampled_from([15001, 9464]))
junk: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=5), st.just([])
)


def unique_by_name(
    items: st.SearchStrategy[dict[str, Any]], max_size: int
) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(items, max_size=max_size, unique_by=lambda d: d["name"])


env_name = st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,12}\Z")
key_ref = st.fixed_dictionaries({"name": dns_label, "key": dns_label})
env = st.one_of(
    st.fixed_dictionaries({"name": env_name, "value": st.text(max_size=10)}),
    st.fixed_dictionaries(
        {
            "name": env_name,
            "valueFrom": st.one_of(
                st.fixed_dictionaries({"secretKeyRef": key_ref}),
                st.fixed_dictionaries({"configMapKeyRef": key_ref}),
            ),
        }
    ),
)
resources = st.fixed_dictionaries(
    {},
    optional={
        "requests": st.fixed_dictionaries({}, optional={"cpu": cpu, "memory": memory}),
        "limits": st.fixed_dictionaries({}, optional={"cpu": cpu, "memory": memory}),
    },
)
workload = st.fixed_dictionaries(
    {"image": st.from_regex(r"\A[a-z]{1,8}(/[a-z]{1,8})?:[0-9]\Z")},
    optional={
        "command": st.lists(st.text(max_size=8), max_size=3),
        "args": st.lists(st.text(max_size=8), max_size=3),
        "env": unique_by_name(env, 4),
        "resources": resources,
    },
)
traffic_policy = st.fixed_dictionaries(
    {},
    optional={
        "timeout": duration,
        "connectTimeout": st.sampled_from(["250ms", "1s", "2s"]),
        "loadBalancer": st.sampled_from(["LEAST_REQUEST", "ROUND_ROBIN", "RANDOM"]),
        "retries": st.fixed_dictionaries(
            {},
            optional={
                "attempts": st.integers(0, 10),
                "perTryTimeout": duration,
                "retryOn": st.lists(
                    st.sampled_from(["UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL",
                                     "RESOURCE_EXHAUSTED"]), min_size=1, max_size=5, unique=True),
                "budget": st.fixed_dictionaries(
                    {}, optional={"percent": st.floats(0, 100), "minConcurrency": st.integers(0, 9)}
                ),
            },
        ),
        "outlierDetection": st.fixed_dictionaries(
            {},
            optional={
                "consecutive5xx": st.integers(1, 9),
                "consecutiveGatewayFailure": st.integers(1, 9),
                "interval": st.sampled_from(["1s", "10s", "1.5s"]),
                "baseEjectionTime": st.sampled_from(["30s", "250ms"]),
                "maxEjectionPercent": st.integers(0, 100),
            },
        ),
        "circuitBreaker": st.fixed_dictionaries(
            {},
            optional={"maxConnections": st.integers(1, 99), "maxRequests": st.integers(1, 99),
                      "maxPendingRequests": st.integers(1, 99), "maxRetries": st.integers(0, 9)},
        ),
    },
)  # fmt: skip


def _weights(n: int) -> st.SearchStrategy[list[int]]:
    if n == 1:
        return st.just([100])
    cuts = st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1).map(sorted)
    return cuts.map(lambda c: [b - a for a, b in zip([0, *c], [*c, 100], strict=True)])


@st.composite
def versions(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(version_name, min_size=1, max_size=4, unique=True))
    weights = draw(_weights(len(names)))
    out = []
    for name, weight in zip(names, weights, strict=True):
        entry: dict[str, Any] = {"name": name, "weight": weight}
        entry |= draw(
            st.fixed_dictionaries(
                {}, optional={"image": st.just("example/v:2"), "replicas": st.integers(0, 5)}
            )
        )
        out.append(entry)
    return out


internal = st.fixed_dictionaries({"name": dns_label})
external = st.fixed_dictionaries(
    {
        "name": dns_label,
        "external": st.fixed_dictionaries(
            {"host": st.just("api.example.com"), "port": st.integers(1, 65535)},
            optional={"tls": st.booleans()},
        ),
    }
)


def method(services: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Overrides of methods of ``services`` (unknown to the catalog, so any name is fine;
    some are longer than App Mesh's 50-character limit on purpose)."""
    names = st.tuples(st.sampled_from(services), st.from_regex(r"\A[A-Z][A-Za-z]{0,60}\Z"))
    retries = st.fixed_dictionaries({}, optional={"attempts": st.integers(0, 10)})
    return st.fixed_dictionaries(
        {"name": names.map("/".join)},
        optional={"timeout": duration, "idempotent": st.booleans(), "retries": retries},
    )


@st.composite
def valid_docs(draw: st.DrawFn) -> dict[str, Any]:
    """Documents that follow every rule the model checks (so they must parse)."""
    services = draw(st.lists(grpc_service, min_size=1, max_size=3, unique=True))
    spec: dict[str, Any] = {"grpc": {"port": draw(port), "services": services}}
    spec |= draw(
        st.fixed_dictionaries(
            {},
            optional={
                "replicas": st.integers(0, 10),
                "expose": st.booleans(),
                "workload": workload,
                "trafficPolicy": traffic_policy,
                "config": st.dictionaries(
                    st.from_regex(r"\A[-._a-zA-Z0-9]{1,12}\Z"), st.text(max_size=20), max_size=4
                ),
                "backends": unique_by_name(st.one_of(internal, external), 4),
                "methods": unique_by_name(method(services), 4),
            },
        )
    )
    if draw(st.booleans()):
        spec["versions"] = draw(versions())
    elif "workload" in spec and draw(st.booleans()):
        spec["workload"]["version"] = draw(version_name)
    return {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": draw(dns_label), "namespace": draw(dns_label), "generation": 1},
        "spec": spec,
    }


@st.composite
def any_docs(draw: st.DrawFn) -> Any:
    """Valid documents with a few fields broken, dropped or added, or not documents at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(junk)
    doc = draw(valid_docs())
    for _ in range(draw(st.integers(1, 3))):
        target = doc["spec"]
        path = draw(st.sampled_from(["spec", "grpc", "workload", "trafficPolicy", "metadata"]))
        if path == "metadata":
            target = doc["metadata"]
        elif path != "spec":
            target = target.get(path)
            if not isinstance(target, dict):
                continue
        key = draw(st.one_of(st.sampled_from(sorted(target) or ["x"]), st.text(max_size=6)))
        action = draw(st.sampled_from(["junk", "drop", "bad-duration", "negative"]))
        if action == "drop":
            target.pop(key, None)
        elif action == "bad-duration":
            target[key] = draw(bad_duration)
        elif action == "negative":
            target[key] = -draw(st.integers(1, 10**6))
        else:
            target[key] = draw(junk)
    return doc


def check_renders(svc: MeshService, catalog: MethodCatalog) -> int:
    """Render with both providers; returns how many providers accepted it."""
    rendered = 0
    for operator in SETTINGS:
        try:
            objects = desired_objects(
                svc,
                namespace=svc.namespace,
                owner=owner_of(svc.name),
                settings=operator,
                catalog=catalog,
            )
        except InvalidResource as exc:
            assert exc.errors and all(e.path.startswith("spec.") for e in exc.errors)
            continue
        rendered += 1
        for obj in objects:
            validate_object(obj, VERSIONS)
            if obj["kind"] == "Deployment":
                pod = obj["spec"]["template"]
                assert restricted_violations(pod["spec"], pod["metadata"]) == []
                assert read_only_root_violations(pod["spec"]) == []
    return rendered


def check_admission(doc: Any, catalog: MethodCatalog) -> None:
    request = {"uid": "u", "operation": "CREATE", "namespace": "default", "object": doc}
    answer = validate_admission(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request},
        known_services=(),
        catalog=catalog,
    )["response"]
    if not answer["allowed"]:
        assert answer["status"]["message"]
        assert answer["status"]["details"]["causes"]


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(doc=valid_docs())
def test_valid_documents_parse_and_render(doc: dict[str, Any], catalog: MethodCatalog) -> None:
    svc = parse_mesh_service(doc, catalog=catalog)  # the generator follows every model rule
    event(f"rendered by {check_renders(svc, catalog)} providers")
    check_admission(doc, catalog)


@FUZZ
@given(doc=any_docs())
def test_any_document_is_rendered_or_rejected(doc: Any, catalog: MethodCatalog) -> None:
    try:
        svc = parse_mesh_service(doc, catalog=catalog)
    except InvalidResource as exc:
        assert exc.errors, "a rejection names at least one problem"
        event("rejected by the parser")
    else:
        event(f"rendered by {check_renders(svc, catalog)} providers")
    check_admission(doc, catalog)


def test_reserved_port_is_a_rejection_not_a_crash(catalog: MethodCatalog) -> None:
    doc = {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": "x"},
        "spec": {"grpc": {"port": 15006, "services": ["a.v1.B"]}, "workload": {"image": "i"}},
    }
    assert check_renders(parse_mesh_service(doc, catalog=catalog), catalog) == 0


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_weight_strategy_sums_to_100(n: int) -> None:
    @given(_weights(n))
    @settings(max_examples=20)
    def check(weights: list[int]) -> None:
        assert sum(weights) == 100 and len(weights) == n and min(weights) >= 0

    check()
