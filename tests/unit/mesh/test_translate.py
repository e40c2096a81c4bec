"""Translation, YAML in -> typed Envoy resources out: the reference mesh's sidecar and ingress
snapshots, asserted on what Envoy will do (which route retries, which deadline, which cluster)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, health_check_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from grpcmesh_control.mesh.model import (
    Endpoint,
    MeshService,
    MethodCatalog,
    parse_mesh_service,
    parse_mesh_services_yaml,
)
from grpcmesh_control.mesh.translate import (
    InvalidNodeId,
    NodeId,
    NodeKind,
    ProxyNode,
    Registry,
    Snapshot,
    SnapshotBuilder,
    UnknownNode,
    build_snapshot,
)
from grpcmesh_control.mesh.translate.clusters import (
    FAILOVER_OVERPROVISIONING,
    WORKER_STREAMS_PER_CONNECTION,
)
from grpcmesh_control.mesh.translate.routes import (
    HOST_SELECTION_ATTEMPTS,
    NOT_DELIVERED_HEADER,
    NOT_DELIVERED_RETRIES,
    NOT_EXPOSED,
)

from .conftest import ENDPOINTS
from .envoy_views import cluster, hcm, listener, route, route_config, speaks_http2, virtual_host

Doc = dict[str, Any]
CATALOG_SVC = "/grpcmesh.shop.v1.CatalogService/"
INVENTORY_SVC = "/grpcmesh.shop.v1.InventoryService/"
ORDER_SVC = "/grpcmesh.shop.v1.OrderService/"
PAYMENT_SVC = "/grpcmesh.shop.v1.PaymentService/"
EDS = cluster_pb2.Cluster.DiscoveryType.EDS


@pytest.fixture
def orders_sidecar(registry: Registry) -> Snapshot:
    return build_snapshot(registry, ProxyNode(NodeId.sidecar("orders", "orders-0")))


@pytest.fixture
def ingress(registry: Registry) -> Snapshot:
    return build_snapshot(registry, ProxyNode(NodeId.ingress()))


def seconds(duration: Any) -> float:
    return float(duration.ToTimedelta() / timedelta(seconds=1))


# --- sidecar ----------------------------------------------------------------------------------


def test_sidecar_listeners(orders_sidecar: Snapshot) -> None:
    inbound = listener(orders_sidecar, "inbound")
    assert inbound.address.socket_address.address == "0.0.0.0"
    assert inbound.address.socket_address.port_value == 15006
    assert inbound.traffic_direction == base_pb2.TrafficDirection.INBOUND
    to_app = route(hcm(inbound).route_config.virtual_hosts[0], "/anything/At.All")
    assert to_app.route.cluster == "inbound|50051"
    assert seconds(to_app.route.timeout) == 0  # the caller's sidecar enforces deadlines

    egress = listener(orders_sidecar, "egress")
    assert egress.address.socket_address.address == "127.0.0.1"
    assert egress.address.socket_address.port_value == 15001
    rds = hcm(egress).rds
    assert rds.route_config_name == "egress"
    assert rds.config_source.HasField("ads")
    assert rds.config_source.resource_api_version == config_source_pb2.ApiVersion.V3


def test_inbound_cluster_is_the_local_app_over_http2(orders_sidecar: Snapshot) -> None:
    app = cluster(orders_sidecar, "inbound|50051")
    assert app.type == cluster_pb2.Cluster.DiscoveryType.STATIC
    (endpoint,) = app.load_assignment.endpoints[0].lb_endpoints
    address = endpoint.endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 50051)
    assert speaks_http2(app)


def _streams_per_connection(item: cluster_pb2.Cluster) -> int | None:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    item.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(options)
    http2 = options.explicit_http_config.http2_protocol_options
    return http2.max_concurrent_streams.value if http2.HasField("max_concurrent_streams") else None


@pytest.mark.parametrize("builder", [build_snapshot, SnapshotBuilder()], ids=["fresh", "memo"])
def test_an_app_with_workers_is_reached_over_several_connections(
    services: dict[str, MeshService],
    catalog: MethodCatalog,
    builder: Callable[[Registry, ProxyNode], Snapshot],
) -> None:
    """Each connection to the app is one worker's: Envoy caps the calls it multiplexes on
    one, so under load it opens more, which the kernel spreads over the workers."""
    node = ProxyNode(NodeId.sidecar("orders", "orders-0"))
    single = builder(Registry.build(services.values(), ENDPOINTS, catalog), node)
    assert _streams_per_connection(cluster(single, "inbound|50051")) is None
    orders = services["orders"]
    assert orders.workload is not None
    two = replace(orders, workload=replace(orders.workload, workers=2))
    mesh = Registry.build(
        [*(s for s in services.values() if s is not orders), two], ENDPOINTS, catalog
    )
    inbound = cluster(builder(mesh, node), "inbound|50051")
    assert _streams_per_connection(inbound) == WORKER_STREAMS_PER_CONNECTION
    assert speaks_http2(inbound)


def test_egress_has_one_virtual_host_per_backend_keyed_by_authority(
    orders_sidecar: Snapshot,
) -> None:
    config = route_config(orders_sidecar, "egress")
    assert [(h.name, list(h.domains)) for h in config.virtual_hosts] == [
        ("catalog", ["catalog", "catalog:*"]),
        ("inventory", ["inventory", "inventory:*"]),
        ("payments", ["payments", "payments:*"]),
    ]


def test_egress_tells_the_app_how_many_attempts_a_call_took(orders_sidecar: Snapshot) -> None:
    # The app needs x-envoy-attempt-count to tell "never sent" (an unretried local reply) from
    # "outcome unknown" (a retry may follow an attempt that landed): docs/reliability.md.
    config = route_config(orders_sidecar, "egress")
    assert all(h.include_attempt_count_in_response for h in config.virtual_hosts)


def test_retries_only_on_idempotent_methods(orders_sidecar: Snapshot) -> None:
    inventory = virtual_host(route_config(orders_sidecar, "egress"), "inventory")
    for method in ("ReserveStock", "ReleaseStock", "CommitStock", "GetStock"):
        policy = route(inventory, INVENTORY_SVC + method).route.retry_policy
        assert policy.retry_on == (
            "unavailable,connect-failure,refused-stream,retriable-headers"
        ), method
        assert policy.num_retries.value == 2
        assert seconds(policy.per_try_timeout) == 0.5
        assert policy.retry_host_predicate[0].name == "envoy.retry_host_predicates.previous_hosts"
    # Not idempotent, or unknown: retried only when the request certainly never reached an app.
    adjust = route(inventory, INVENTORY_SVC + "AdjustStock")
    unknown = route(inventory, INVENTORY_SVC + "NotInTheProtos")
    assert unknown.match.prefix == INVENTORY_SVC
    for unsafe in (adjust, unknown):
        policy = unsafe.route.retry_policy
        assert policy.retry_on == "connect-failure,refused-stream,retriable-headers"
        assert policy.num_retries.value == NOT_DELIVERED_RETRIES
        assert not policy.HasField("per_try_timeout")


def test_every_route_retries_undelivered_calls_in_another_priority(
    orders_sidecar: Snapshot,
) -> None:
    for host in route_config(orders_sidecar, "egress").virtual_hosts:
        for item in host.routes:
            policy = item.route.retry_policy
            assert [(h.name, h.present_match) for h in policy.retriable_headers] == [
                (NOT_DELIVERED_HEADER, True)
            ], item.name
            assert policy.retry_priority.name == "envoy.retry_priorities.previous_priorities"
            config = previous_priorities_config_pb2.PreviousPrioritiesConfig()
            assert policy.retry_priority.typed_config.Unpack(config)
            assert config.update_frequency == 1
            assert policy.host_selection_retry_max_attempts == HOST_SELECTION_ATTEMPTS


def test_a_retry_rarely_returns_to_the_endpoint_that_failed_it() -> None:
    # Beside one live peer, LEAST_REQUEST's two random choices pick an endpoint that fails at
    # once (no active requests) 3 times in 4. With Envoy's 3 re-picks a retry went back to it
    # a third of the time, and undelivered calls failed all their tries (tests/e2e/test_chaos).
    assert (3 / 4) ** (1 + HOST_SELECTION_ATTEMPTS) < 0.01


def test_inbound_marks_local_replies_that_never_reached_the_app(
    orders_sidecar: Snapshot,
) -> None:
    def marking(name: str) -> list[Any]:
        mappers = hcm(listener(orders_sidecar, name)).local_reply_config.mappers
        return [
            m
            for m in mappers
            if any(h.header.key == NOT_DELIVERED_HEADER for h in m.headers_to_add)
        ]

    (mapper,) = marking("inbound")
    assert sorted(mapper.filter.response_flag_filter.flags) == ["UF", "UH", "UO"]
    assert [(h.header.key, h.header.value) for h in mapper.headers_to_add] == [
        (NOT_DELIVERED_HEADER, "true")
    ]
    assert not mapper.HasField("status_code")  # the reply itself is Envoy's
    # Only the inbound side says "not delivered": the egress and ingress pass replies through.
    assert marking("egress") == []


def test_timeouts_per_service_and_method(orders_sidecar: Snapshot) -> None:
    egress = route_config(orders_sidecar, "egress")
    inventory = virtual_host(egress, "inventory")
    assert seconds(route(inventory, INVENTORY_SVC + "GetStock").route.timeout) == 2
    assert seconds(route(inventory, INVENTORY_SVC + "ReserveStock").route.timeout) == 3
    assert seconds(route(inventory, INVENTORY_SVC + "AdjustStock").route.timeout) == 5
    catalog = virtual_host(egress, "catalog")
    assert seconds(route(catalog, CATALOG_SVC + "GetProduct").route.timeout) == 1


def test_exact_method_routes_precede_the_service_prefix(orders_sidecar: Snapshot) -> None:
    inventory = virtual_host(route_config(orders_sidecar, "egress"), "inventory")
    kinds = [r.match.WhichOneof("path_specifier") for r in inventory.routes]
    assert kinds == ["path"] * (len(kinds) - 1) + ["prefix"]


def test_canary_versions_get_weighted_clusters(orders_sidecar: Snapshot) -> None:
    payments = virtual_host(route_config(orders_sidecar, "egress"), "payments")
    for path in (PAYMENT_SVC + "Charge", PAYMENT_SVC + "Unknown"):
        action = route(payments, path).route
        assert not action.cluster
        weights = [(c.name, c.weight.value) for c in action.weighted_clusters.clusters]
        assert weights == [("payments|v1", 90), ("payments|v2", 10)]


def test_clusters_of_a_sidecar(orders_sidecar: Snapshot) -> None:
    assert [c.name for c in orders_sidecar.clusters] == [
        "catalog|v1",
        "inbound|50051",
        "inventory|v1",
        "payments|v1",
        "payments|v2",
    ]
    for item in orders_sidecar.clusters:
        assert speaks_http2(item), item.name
        if item.name.startswith("inbound"):
            continue
        assert item.type == EDS
        assert item.eds_cluster_config.service_name == item.name
        assert item.eds_cluster_config.eds_config.HasField("ads")
        assert item.lb_policy == cluster_pb2.Cluster.LbPolicy.LEAST_REQUEST
        assert item.common_lb_config.healthy_panic_threshold.value == 0


def test_outlier_detection_enforces_only_what_is_set(orders_sidecar: Snapshot) -> None:
    catalog = cluster(orders_sidecar, "catalog|v1").outlier_detection
    assert catalog.consecutive_gateway_failure.value == 5
    assert catalog.enforcing_consecutive_gateway_failure.value == 100
    assert catalog.enforcing_consecutive_5xx.value == 0
    assert catalog.enforcing_success_rate.value == 0
    assert (seconds(catalog.interval), seconds(catalog.base_ejection_time)) == (5, 30)
    assert catalog.max_ejection_percent.value == 50
    inventory = cluster(orders_sidecar, "inventory|v1").outlier_detection
    assert (inventory.consecutive_5xx.value, inventory.enforcing_consecutive_5xx.value) == (10, 100)


def test_circuit_breakers_and_retry_budget(orders_sidecar: Snapshot) -> None:
    (limits,) = cluster(orders_sidecar, "inventory|v1").circuit_breakers.thresholds
    assert limits.priority == base_pb2.RoutingPriority.DEFAULT
    assert (limits.max_connections.value, limits.max_pending_requests.value) == (100, 100)
    assert limits.max_requests.value == 200
    assert not limits.HasField("max_retries")  # Envoy's default; the budget governs anyway
    assert limits.retry_budget.budget_percent.value == 20  # inventory sets Envoy's defaults
    assert limits.retry_budget.min_retry_concurrency.value == 3
    (payments,) = cluster(orders_sidecar, "payments|v2").circuit_breakers.thresholds
    assert payments.max_requests.value == 100
    assert not payments.HasField("max_connections")
    # Payments sets no budget: the mesh's default lets a failover's resends through (50 % of
    # the active calls, at least 10; docs/reliability.md).
    assert payments.retry_budget.budget_percent.value == 50
    assert payments.retry_budget.min_retry_concurrency.value == 10


def test_load_assignments_carry_readiness(orders_sidecar: Snapshot) -> None:
    assignments = {a.cluster_name: a for a in orders_sidecar.endpoints}
    assert set(assignments) == {"catalog|v1", "inventory|v1", "payments|v1", "payments|v2"}
    statuses = {
        e.endpoint.address.socket_address.address: e.health_status
        for e in assignments["catalog|v1"].endpoints[0].lb_endpoints
    }
    assert statuses == {
        "10.0.0.1": health_check_pb2.HealthStatus.HEALTHY,
        "10.0.0.2": health_check_pb2.HealthStatus.UNHEALTHY,
    }
    v2 = assignments["payments|v2"].endpoints[0].lb_endpoints
    assert [e.endpoint.address.socket_address.address for e in v2] == ["10.0.2.2"]


def _localities(assignment: Any) -> list[tuple[int, str, int, list[str]]]:
    return [
        (
            group.priority,
            group.locality.sub_zone,
            group.load_balancing_weight.value,
            [e.endpoint.address.socket_address.address for e in group.lb_endpoints],
        )
        for group in assignment.endpoints
    ]


def test_each_version_fails_over_to_the_others_at_priority_1(orders_sidecar: Snapshot) -> None:
    assignments = {a.cluster_name: a for a in orders_sidecar.endpoints}
    assert _localities(assignments["payments|v2"]) == [
        (0, "v2", 1, ["10.0.2.2"]),
        (1, "v1", 90, ["10.0.2.1"]),
    ]
    assert _localities(assignments["payments|v1"]) == [
        (0, "v1", 1, ["10.0.2.1"]),
        (1, "v2", 10, ["10.0.2.2"]),
    ]
    # One version: nothing to fail over to.
    assert _localities(assignments["inventory|v1"]) == [(0, "v1", 1, ["10.0.1.1"])]
    # A version keeps its whole share while any endpoint of it is healthy: only a version with
    # none fails over (Envoy's default 1.4 would spill 30 % of a half-healthy version).
    for assignment in orders_sidecar.endpoints:
        factor = assignment.policy.overprovisioning_factor.value
        assert factor == FAILOVER_OVERPROVISIONING, assignment.cluster_name
    # Locality weights split a failed-over share by version weight.
    for name in ("payments|v1", "payments|v2"):
        lb = cluster(orders_sidecar, name).common_lb_config
        assert lb.HasField("locality_weighted_lb_config"), name


def test_a_dead_versions_share_moves_to_the_others_in_proportion(
    example_docs: dict[str, Doc], services: dict[str, MeshService]
) -> None:
    doc = example_docs["payments"]
    doc["spec"]["versions"] = [
        {"name": "v1", "weight": 60},
        {"name": "v2", "weight": 30},
        {"name": "v3", "weight": 10},
        {"name": "dark", "weight": 0},
    ]
    endpoints = {
        "payments": [
            Endpoint("10.0.2.1", 1, "v1"),
            Endpoint("10.0.2.2", 1, "v2", ready=False),
            Endpoint("10.0.2.3", 1, "v3"),
            Endpoint("10.0.2.4", 1, "dark"),
        ]
    }
    registry = Registry.build([services["orders"], parse_mesh_service(doc)], endpoints)
    snapshot = build_snapshot(registry, ProxyNode(NodeId.sidecar("orders", "0")))
    assignments = {a.cluster_name: a for a in snapshot.endpoints}
    # v2's endpoint is not ready (UNHEALTHY at priority 0), so Envoy sends its 30 % to
    # priority 1, split 60:10 between v1 and v3; a version without weight takes none.
    assert _localities(assignments["payments|v2"]) == [
        (0, "v2", 1, ["10.0.2.2"]),
        (1, "v1", 60, ["10.0.2.1"]),
        (1, "v3", 10, ["10.0.2.3"]),
    ]
    (own,) = assignments["payments|v2"].endpoints[0].lb_endpoints
    assert own.health_status == health_check_pb2.HealthStatus.UNHEALTHY
    # A version no route sends to fails over too: calls routed to it before its weight went to
    # 0 (in flight, retried, or routed by the route Envoy still has) still pick hosts there.
    assert _localities(assignments["payments|dark"]) == [
        (0, "dark", 1, ["10.0.2.4"]),
        (1, "v1", 60, ["10.0.2.1"]),
        (1, "v2", 30, ["10.0.2.2"]),  # not ready: UNHEALTHY, so it takes none of it
        (1, "v3", 10, ["10.0.2.3"]),
    ]


def test_a_version_scaled_to_zero_fails_over_whole(
    example_docs: dict[str, Doc], services: dict[str, MeshService]
) -> None:
    doc = example_docs["payments"]
    endpoints = {"payments": [Endpoint("10.0.2.1", 1, "v1")]}  # v2 has none
    registry = Registry.build([services["orders"], parse_mesh_service(doc)], endpoints)
    snapshot = build_snapshot(registry, ProxyNode(NodeId.sidecar("orders", "0")))
    v2 = next(a for a in snapshot.endpoints if a.cluster_name == "payments|v2")
    # Priority 0 is kept (empty): Envoy's priorities do not skip a level.
    assert _localities(v2) == [(0, "v2", 1, []), (1, "v1", 90, ["10.0.2.1"])]


def test_ports_come_from_node_metadata(registry: Registry) -> None:
    metadata = {
        "grpcmesh": {
            "inbound_port": 41001.0,  # protobuf Struct numbers are floats
            "egress_port": 41002,
            "app_port": 41003,
            "bind_address": "127.0.0.1",
        }
    }
    node = ProxyNode.from_node("sidecar~orders~local-0", metadata)
    assert ProxyNode.from_node(str(node.id), node.metadata()) == node
    snapshot = build_snapshot(registry, node)
    inbound = listener(snapshot, "inbound").address.socket_address
    assert (inbound.address, inbound.port_value) == ("127.0.0.1", 41001)
    assert listener(snapshot, "egress").address.socket_address.port_value == 41002
    assert [c.name for c in snapshot.clusters if c.name.startswith("inbound")] == ["inbound|41003"]


def test_every_route_honours_the_callers_grpc_timeout(
    orders_sidecar: Snapshot, ingress: Snapshot
) -> None:
    # Envoy bounds the call by the caller's grpc-timeout capped at the route's timeout
    # (grpc_timeout_header_max; 0s = uncapped), and by the route's timeout without a header
    # (max_stream_duration: Envoy ignores RouteAction.timeout on such a route, and answers an
    # expired stream duration with DEADLINE_EXCEEDED). Streaming routes (0s): the header only.
    configs = [*orders_sidecar.routes, *ingress.routes]
    configs.append(hcm(listener(orders_sidecar, "inbound")).route_config)
    # (a route that answers by itself, the ingress's catch-all, forwards nothing)
    actions = [
        r.route
        for config in configs
        for h in config.virtual_hosts
        for r in h.routes
        if not r.HasField("direct_response")
    ]
    assert actions
    for action in actions:
        assert action.HasField("max_stream_duration")
        limits = action.max_stream_duration
        assert limits.HasField("grpc_timeout_header_max")
        assert seconds(limits.grpc_timeout_header_max) == seconds(action.timeout)
        if seconds(action.timeout) == 0:
            assert not limits.HasField("max_stream_duration")  # no bound but the caller's
        else:
            assert seconds(limits.max_stream_duration) == seconds(action.timeout)
    assert any(seconds(a.timeout) > 0 for a in actions)
    assert any(seconds(a.timeout) == 0 for a in actions)


def test_external_routes_honour_the_callers_grpc_timeout() -> None:
    registry = Registry.build(parse_mesh_services_yaml(EXTERNAL, source="quotes.yaml"))
    snapshot = build_snapshot(registry, ProxyNode(NodeId.sidecar("quotes", "0")))
    action = route(virtual_host(route_config(snapshot, "egress"), "fx"), "/a.B/C").route
    assert action.max_stream_duration.HasField("grpc_timeout_header_max")


def test_quiet_streams_are_not_cut_after_five_minutes(
    orders_sidecar: Snapshot, ingress: Snapshot
) -> None:
    # WatchOrder may send nothing while a saga waits; Envoy's default idle timeout is 5 min.
    for item in [*orders_sidecar.listeners, *ingress.listeners]:
        assert seconds(hcm(item).stream_idle_timeout) == 3600, item.name


# --- ingress ----------------------------------------------------------------------------------


def test_ingress_routes_exposed_services_by_path(ingress: Snapshot) -> None:
    (gateway,) = ingress.listeners
    assert gateway.name == "ingress"
    assert gateway.address.socket_address.port_value == 8080
    assert hcm(gateway).use_remote_address.value is True
    (host,) = route_config(ingress, "ingress").virtual_hosts
    assert list(host.domains) == ["*"]
    targets = {
        CATALOG_SVC + "ListProducts": "catalog|v1",
        ORDER_SVC + "PlaceOrder": "orders|v1",
    }
    for path, target in targets.items():
        assert route(host, path).route.cluster == target


def test_ingress_does_not_route_unexposed_services(ingress: Snapshot) -> None:
    # inventory and payments leave spec.expose at its default (false): internal only.
    (host,) = route_config(ingress, "ingress").virtual_hosts
    for path in (INVENTORY_SVC + "GetStock", PAYMENT_SVC + "Charge"):
        caught = route(host, path)  # only by the catch-all: UNIMPLEMENTED, with the reason
        assert caught.name == "not-exposed" and caught.direct_response.status == 404
        assert caught.direct_response.body.inline_string == NOT_EXPOSED
    assert host.routes[-1] == caught  # after every route that forwards


def test_exposing_a_service_routes_it_at_the_ingress(
    example_docs: dict[str, Doc], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["payments"]
    doc["spec"]["expose"] = True
    registry = Registry.build(
        {**services, "payments": parse_mesh_service(doc, catalog=catalog)}.values(),
        ENDPOINTS,
        catalog,
    )
    snapshot = build_snapshot(registry, ProxyNode(NodeId.ingress()))
    (host,) = route_config(snapshot, "ingress").virtual_hosts
    assert len(route(host, PAYMENT_SVC + "Charge").route.weighted_clusters.clusters) == 2
    assert {"payments|v1", "payments|v2"} <= {c.name for c in snapshot.clusters}


def test_an_ingress_with_nothing_exposed_is_still_consistent(
    services: dict[str, MeshService],
) -> None:
    internal = [s for s in services.values() if not s.expose]
    snapshot = build_snapshot(Registry.build(internal), ProxyNode(NodeId.ingress()))
    (host,) = route_config(snapshot, "ingress").virtual_hosts
    # only server reflection, to the control plane (it lists nothing then), and the catch-all
    assert [(r.match.prefix, r.route.cluster) for r in host.routes] == [
        ("/grpc.reflection.v1.ServerReflection/", "xds_cluster"),
        ("/grpc.reflection.v1alpha.ServerReflection/", "xds_cluster"),
        ("/", ""),
    ]
    assert snapshot.clusters == () and snapshot.endpoints == ()


def test_ingress_streaming_and_overridden_methods(ingress: Snapshot) -> None:
    (host,) = route_config(ingress, "ingress").virtual_hosts
    watch = route(host, ORDER_SVC + "WatchOrder").route
    assert seconds(watch.timeout) == 0  # server-streaming: no deadline
    assert watch.retry_policy.num_retries.value == 2  # NO_SIDE_EFFECTS: retried...
    assert not watch.retry_policy.HasField("per_try_timeout")  # ...without cutting the stream
    place = route(host, ORDER_SVC + "PlaceOrder").route
    assert seconds(place.timeout) == 10
    assert (place.retry_policy.num_retries.value, seconds(place.retry_policy.per_try_timeout)) == (
        1,
        8,
    )


def test_ingress_has_every_exposed_version_cluster_and_empty_assignments(
    ingress: Snapshot,
) -> None:
    names = [c.name for c in ingress.clusters]
    assert names == ["catalog|v1", "orders|v1"]
    orders = next(a for a in ingress.endpoints if a.cluster_name == "orders|v1")
    assert len(orders.endpoints) == 0  # no endpoints yet, but the assignment is sent


# --- registry edge cases ------------------------------------------------------------------------


def test_unknown_backend_is_reported_and_skipped(
    example_docs: dict[str, Doc], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["orders"]
    doc["spec"]["backends"].append({"name": "shipping"})
    orders = parse_mesh_service(doc, catalog=catalog)
    registry = Registry.build({**services, "orders": orders}.values(), ENDPOINTS, catalog)
    assert [str(p) for p in registry.problems] == [
        "MeshService default/orders: spec.backends[3].name: no MeshService shipping; "
        "not routable until it exists"
    ]
    snapshot = build_snapshot(registry, ProxyNode(NodeId.sidecar("orders", "0")))
    hosts = [h.name for h in route_config(snapshot, "egress").virtual_hosts]
    assert "shipping" not in hosts and "payments" in hosts


def test_same_name_in_two_namespaces(
    example_docs: dict[str, Doc], services: dict[str, MeshService]
) -> None:
    doc = example_docs["catalog"]
    doc["metadata"]["namespace"] = "staging"
    registry = Registry.build([*services.values(), parse_mesh_service(doc)])
    assert [str(p) for p in registry.problems] == [
        "MeshService staging/catalog: metadata.name: name already used by default/catalog"
    ]
    resolved = registry.service("catalog")
    assert resolved is not None and resolved.namespace == "default"


def test_a_grpc_service_claimed_twice_is_routed_to_its_first_owner_at_ingress(
    example_docs: dict[str, Doc], services: dict[str, MeshService], catalog: MethodCatalog
) -> None:
    doc = example_docs["catalog"]
    doc["metadata"]["name"] = "catalog-next"
    registry = Registry.build([*services.values(), parse_mesh_service(doc)], {}, catalog)
    assert "already served by MeshService default/catalog" in str(registry.problems[0])
    (host,) = route_config(
        build_snapshot(registry, ProxyNode(NodeId.ingress())), "ingress"
    ).virtual_hosts
    assert route(host, CATALOG_SVC + "GetProduct").route.cluster == "catalog|v1"


def test_endpoints_of_undeclared_versions_are_not_routed(services: dict[str, MeshService]) -> None:
    # e.g. pods of a retired version still draining
    endpoints = {"catalog": [Endpoint("10.0.0.1", 1, "v1"), Endpoint("10.0.0.9", 1, "v0")]}
    registry = Registry.build(services.values(), endpoints)
    snapshot = build_snapshot(registry, ProxyNode(NodeId.ingress()))
    catalog = [a for a in snapshot.endpoints if a.cluster_name.startswith("catalog|")]
    assert [a.cluster_name for a in catalog] == ["catalog|v1"]
    (only,) = catalog[0].endpoints[0].lb_endpoints
    assert only.endpoint.address.socket_address.address == "10.0.0.1"


def test_zero_weight_version_has_a_cluster_but_no_traffic(
    example_docs: dict[str, Doc], services: dict[str, MeshService]
) -> None:
    doc = example_docs["payments"]
    doc["spec"]["versions"] = [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}]
    registry = Registry.build([services["orders"], parse_mesh_service(doc)])
    snapshot = build_snapshot(registry, ProxyNode(NodeId.sidecar("orders", "0")))
    assert {"payments|v1", "payments|v2"} <= {c.name for c in snapshot.clusters}
    payments = virtual_host(route_config(snapshot, "egress"), "payments")
    assert route(payments, PAYMENT_SVC + "Charge").route.cluster == "payments|v1"


EXTERNAL = """
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {name: quotes}
spec:
  grpc: {port: 9000, services: [test.v1.Quotes]}
  backends:
    - name: fx
      external: {host: fx.example.com, port: 443, tls: true}
"""


def test_external_backend_over_tls() -> None:
    registry = Registry.build(parse_mesh_services_yaml(EXTERNAL, source="quotes.yaml"))
    snapshot = build_snapshot(registry, ProxyNode(NodeId.sidecar("quotes", "0")))
    fx = cluster(snapshot, "external|fx")
    assert fx.type == cluster_pb2.Cluster.DiscoveryType.STRICT_DNS
    assert speaks_http2(fx)
    tls = tls_pb2.UpstreamTlsContext()
    fx.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "fx.example.com"
    assert list(tls.common_tls_context.alpn_protocols) == ["h2"]
    validation = tls.common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/etc/ssl/certs/ca-certificates.crt"
    assert validation.match_typed_subject_alt_names[0].matcher.exact == "fx.example.com"
    host = virtual_host(route_config(snapshot, "egress"), "fx")
    action = route(host, "/any.Service/Method").route
    assert (action.cluster, action.host_rewrite_literal) == ("external|fx", "fx.example.com")
    assert snapshot.endpoints == ()  # DNS clusters carry their own hosts; no EDS


def test_the_ca_bundle_is_the_proxys() -> None:
    registry = Registry.build(parse_mesh_services_yaml(EXTERNAL, source="quotes.yaml"))
    node = ProxyNode.from_node("sidecar~quotes~0", {"grpcmesh": {"ca_bundle": "/etc/pki/ca.pem"}})
    fx = cluster(build_snapshot(registry, node), "external|fx")
    tls = tls_pb2.UpstreamTlsContext()
    fx.transport_socket.typed_config.Unpack(tls)
    assert tls.common_tls_context.validation_context.trusted_ca.filename == "/etc/pki/ca.pem"


def test_unknown_sidecar_service(registry: Registry) -> None:
    with pytest.raises(UnknownNode, match="no MeshService shipping"):
        build_snapshot(registry, ProxyNode(NodeId.sidecar("shipping", "0")))


# --- node ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sidecar~orders~orders-v1-7d9f8-abcde",
            NodeId(NodeKind.SIDECAR, "orders", "orders-v1-7d9f8-abcde"),
        ),
        ("ingress~gateway", NodeId(NodeKind.INGRESS, "gateway")),
        ("ingress~gateway~1", NodeId(NodeKind.INGRESS, "gateway", "1")),
    ],
)
def test_node_ids_round_trip(text: str, expected: NodeId) -> None:
    assert NodeId.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    [
        "orders",
        "sidecar~orders",
        "sidecar~Orders~0",
        "router~x",
        "sidecar~orders~a~b",
        "sidecar~orders~a/b",
    ],
)
def test_bad_node_ids(text: str) -> None:
    with pytest.raises(InvalidNodeId):
        NodeId.parse(text)


def test_envoy_cluster_of_a_node() -> None:
    assert NodeId.sidecar("orders", "0").envoy_cluster == "orders"
    assert NodeId.ingress().envoy_cluster == "ingress"


@pytest.mark.parametrize(
    "metadata",
    [
        {"grpcmesh": {"inbound_port": 15006.5}},
        {"grpcmesh": {"egress_port": 0}},
        {"grpcmesh": {"app_port": "8080"}},
        {"grpcmesh": {"bind_address": ""}},
        {"grpcmesh": {"ca_bundle": 1}},
        {"grpcmesh": {"otlp_collector": "collector"}},
        {"grpcmesh": {"otlp_collector": 4317}},
        {"grpcmesh": {"access_log": "yes"}},
        {"grpcmesh": {"trace_sampling": 1.5}},
        {"grpcmesh": {"trace_sampling": "0.1"}},
        {"grpcmesh": {"trace_sampling": True}},
        {"grpcmesh": "ports"},
    ],
)
def test_bad_node_metadata(metadata: dict[str, Any]) -> None:
    with pytest.raises(InvalidNodeId):
        ProxyNode.from_node("sidecar~orders~0", metadata)


# --- observability ------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0])
def test_the_sampling_ratio_is_every_traced_listeners_random_sampling(
    registry: Registry, ratio: float
) -> None:
    node = ProxyNode.from_node(
        "sidecar~orders~0",
        {"grpcmesh": {"otlp_collector": "127.0.0.1:4317", "trace_sampling": ratio}},
    )
    assert node.trace_sampling == ratio
    assert ProxyNode.from_node("sidecar~orders~0", node.metadata()) == node
    managers = _hcms(build_snapshot(registry, node))
    assert managers
    assert all(m.tracing.random_sampling.value == pytest.approx(ratio * 100) for m in managers)


def _hcms(snapshot: Snapshot) -> list[Any]:
    return [hcm(item) for item in snapshot.listeners]


def test_nothing_is_traced_or_access_logged_by_default(
    orders_sidecar: Snapshot, ingress: Snapshot
) -> None:
    for manager in (*_hcms(orders_sidecar), *_hcms(ingress)):
        assert not manager.HasField("tracing")
        assert not manager.access_log
    assert "otlp_collector" not in {c.name for c in orders_sidecar.clusters}


@pytest.mark.parametrize("node_id", ["sidecar~orders~0", "ingress~gateway"])
def test_a_node_with_a_collector_traces_every_listener_to_it(
    registry: Registry, node_id: str
) -> None:
    metadata = {"grpcmesh": {"otlp_collector": "127.0.0.1:4317", "access_log": True}}
    node = ProxyNode.from_node(node_id, metadata)
    assert ProxyNode.from_node(node_id, node.metadata()) == node
    snapshot = build_snapshot(registry, node)
    collector = cluster(snapshot, "otlp_collector")
    assert speaks_http2(collector)
    address = collector.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "127.0.0.1",
        4317,
    )
    for manager in _hcms(snapshot):
        provider = manager.tracing.provider
        assert provider.name == "envoy.tracers.opentelemetry"
        tracer = opentelemetry_pb2.OpenTelemetryConfig()
        provider.typed_config.Unpack(tracer)
        assert tracer.grpc_service.envoy_grpc.cluster_name == "otlp_collector"
        assert tracer.service_name == node.id.envoy_cluster
        # The mesh-wide default ratio, in percent.
        assert manager.tracing.random_sampling.value == pytest.approx(1.0)
        [log] = manager.access_log
        stdout = stream_pb2.StdoutAccessLog()
        log.typed_config.Unpack(stdout)
        fields = dict(stdout.log_format.json_format)
        assert fields["trace_id"] == "%TRACE_ID%"
        assert fields["traceparent"] == "%REQ(TRACEPARENT)%"
        assert fields["request_id"] == "%REQ(X-REQUEST-ID)%"
