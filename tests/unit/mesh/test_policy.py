"""Effective per-route policy: who gets retried, with which deadline (no Envoy types here)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from grpcmesh_control.mesh.model import (
    FaultAbort,
    FaultDelay,
    FaultInjection,
    GrpcCode,
    GrpcSpec,
    Idempotency,
    MeshService,
    MethodCatalog,
    MethodInfo,
    MethodPolicy,
    RetryOn,
    TrafficPolicy,
    parse_mesh_services_yaml,
)
from grpcmesh_control.mesh.translate import EffectiveRetry, RoutePolicy, route_policies
from grpcmesh_control.mesh.translate.routes import fault_config

SVC = "test.v1.Things"
CATALOG = MethodCatalog.of(
    {
        SVC: [
            MethodInfo("Get", Idempotency.NO_SIDE_EFFECTS),
            MethodInfo("Put", Idempotency.IDEMPOTENT),
            MethodInfo("Create"),  # IDEMPOTENCY_UNKNOWN
            MethodInfo("Watch", Idempotency.NO_SIDE_EFFECTS, server_streaming=True),
            MethodInfo("Upload", Idempotency.IDEMPOTENT, client_streaming=True),
        ]
    }
)
BASE = f"""
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {{name: things}}
spec:
  grpc: {{port: 9000, services: [{SVC}]}}
  trafficPolicy:
    timeout: 2s
    retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: [UNAVAILABLE, INTERNAL]}}
"""
SERVICE_RETRY = EffectiveRetry(
    3, (RetryOn.UNAVAILABLE, RetryOn.INTERNAL), timedelta(milliseconds=500)
)


def service(extra: str = "", *, base: str = BASE) -> MeshService:
    (svc,) = parse_mesh_services_yaml(base + extra, source="test", catalog=CATALOG)
    return svc


def policies(svc: MeshService, catalog: MethodCatalog = CATALOG) -> dict[str, RoutePolicy]:
    return {p.path: p for p in route_policies(svc, catalog)}


def test_only_idempotent_methods_are_retried() -> None:
    routes = policies(service())
    assert routes[f"/{SVC}/Get"].retry == SERVICE_RETRY
    assert routes[f"/{SVC}/Put"].retry == SERVICE_RETRY
    # Not idempotent: no exact route at all, the prefix (no retries) serves it.
    assert f"/{SVC}/Create" not in routes
    assert routes[f"/{SVC}/"] == RoutePolicy(SVC, f"/{SVC}/", False, timedelta(seconds=2), None)


def test_exact_routes_come_before_the_prefix() -> None:
    paths = [p.path for p in route_policies(service(), CATALOG)]
    assert paths[-1] == f"/{SVC}/"
    assert paths[:-1] == sorted(paths[:-1])


def test_client_streaming_is_never_retried() -> None:
    upload = policies(service())[f"/{SVC}/Upload"]
    assert upload.retry is None  # Envoy would have to buffer the whole request stream
    assert upload.timeout == timedelta(0)


def test_server_streaming_has_no_deadline_and_no_per_try_timeout() -> None:
    watch = policies(service())[f"/{SVC}/Watch"]
    assert watch.timeout == timedelta(0)
    assert watch.retry == EffectiveRetry(3, (RetryOn.UNAVAILABLE, RetryOn.INTERNAL), None)


def test_explicit_method_timeout_applies_to_streams_too() -> None:
    svc = service(f"  methods: [{{name: {SVC}/Watch, timeout: 1h}}]\n")
    assert policies(svc)[f"/{SVC}/Watch"].timeout == timedelta(hours=1)


@pytest.mark.parametrize(
    ("method", "idempotent", "retried"),
    [("Create", True, True), ("Put", False, False), ("Get", False, False)],
)
def test_idempotent_override_wins_over_the_proto(
    method: str, idempotent: bool, retried: bool
) -> None:
    flag = "true" if idempotent else "false"
    svc = service(f"  methods: [{{name: {SVC}/{method}, idempotent: {flag}, timeout: 3s}}]\n")
    route = policies(svc)[f"/{SVC}/{method}"]
    assert (route.retry is not None) is retried
    assert route.timeout == timedelta(seconds=3)


def test_method_retry_fields_override_field_by_field() -> None:
    svc = service(f"  methods: [{{name: {SVC}/Put, retries: {{attempts: 1}}}}]\n")
    assert policies(svc)[f"/{SVC}/Put"].retry == EffectiveRetry(
        1, (RetryOn.UNAVAILABLE, RetryOn.INTERNAL), timedelta(milliseconds=500)
    )
    svc = service(f"  methods: [{{name: {SVC}/Put, retries: {{retryOn: [RESOURCE_EXHAUSTED]}}}}]\n")
    assert policies(svc)[f"/{SVC}/Put"].retry == EffectiveRetry(
        3, (RetryOn.RESOURCE_EXHAUSTED,), timedelta(milliseconds=500)
    )


def test_zero_attempts_disables_retries() -> None:
    off = BASE.replace("attempts: 3", "attempts: 0")
    routes = policies(service(base=off))
    assert all(p.retry is None for p in routes.values())
    # Only streaming methods keep an exact route: their deadline differs.
    assert set(routes) == {f"/{SVC}/Watch", f"/{SVC}/Upload", f"/{SVC}/"}
    # ...and a method can turn them back on.
    svc = service(f"  methods: [{{name: {SVC}/Get, retries: {{attempts: 2}}}}]\n", base=off)
    get = policies(svc)[f"/{SVC}/Get"].retry
    assert get is not None and get.attempts == 2


def test_without_a_catalog_only_overrides_get_routes() -> None:
    svc = service(f"  methods: [{{name: {SVC}/Get, timeout: 9s}}]\n")
    routes = policies(svc, MethodCatalog())
    # Idempotency unknown without the protos: a timeout override but no retries.
    assert routes[f"/{SVC}/Get"] == RoutePolicy(
        SVC, f"/{SVC}/Get", True, timedelta(seconds=9), None
    )
    assert set(routes) == {f"/{SVC}/Get", f"/{SVC}/"}


def test_reference_inventory(services: dict[str, MeshService], catalog: MethodCatalog) -> None:
    routes = policies(services["inventory"], catalog)
    prefix = "/grpcmesh.shop.v1.InventoryService/"
    adjust = routes[prefix + "AdjustStock"]
    assert adjust.retry is None and adjust.timeout == timedelta(seconds=5)
    reserve = routes[prefix + "ReserveStock"]
    assert reserve.retry is not None and reserve.timeout == timedelta(seconds=3)
    assert routes[prefix + "GetStock"].timeout == timedelta(seconds=2)


def test_faults_apply_to_every_method_and_a_method_may_replace_or_drop_them() -> None:

    service = FaultInjection(abort=FaultAbort(GrpcCode.UNAVAILABLE, 12.5))
    own = FaultInjection(delay=FaultDelay(timedelta(milliseconds=250), 0.0001))
    svc = MeshService(
        name="catalog",
        namespace="default",
        grpc=GrpcSpec(50051, ("x.Catalog",)),
        traffic_policy=TrafficPolicy(fault=service),
        methods=(
            MethodPolicy("x.Catalog/Slow", fault=own),
            MethodPolicy("x.Catalog/Off", fault=FaultInjection()),
        ),
    )
    catalog = MethodCatalog.of(
        {"x.Catalog": [MethodInfo("Get"), MethodInfo("Slow"), MethodInfo("Off")]}
    )
    by_path = {p.path: p.fault for p in route_policies(svc, catalog)}
    assert by_path == {"/x.Catalog/Off": None, "/x.Catalog/Slow": own, "/x.Catalog/": service}
    abort = fault_config(service).abort
    assert (abort.grpc_status, abort.percentage.numerator, abort.percentage.denominator) == (
        14,
        125_000,
        2,
    )
    delay = fault_config(own).delay
    assert (delay.fixed_delay.ToMilliseconds(), delay.percentage.numerator) == (250, 1)
    assert not fault_config(own).HasField("abort")
