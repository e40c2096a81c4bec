"""Proxyless translation, YAML in -> the resources gRPC's xDS client reads: per backend an API
listener, its routes, round-robin EDS clusters and the sidecars' load assignments; external
backends through the replica's own sidecar; and the backend-side deadlines that stand in for
the client's (grpc/grpc#34547)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)

from grpcmesh_control.mesh.model import (
    Endpoint,
    MethodCatalog,
    parse_mesh_services_yaml,
)
from grpcmesh_control.mesh.model.catalog import Idempotency, MethodInfo
from grpcmesh_control.mesh.publisher import Publisher
from grpcmesh_control.mesh.translate import (
    InvalidNodeId,
    NodeId,
    NodeKind,
    ProxyNode,
    Registry,
    Snapshot,
    UnknownNode,
    build_snapshot,
    node_group,
)
from grpcmesh_control.mesh.translate.proxyless import (
    GRPC_MAX_ATTEMPTS,
    SIDECAR_EGRESS_CLUSTER,
    grpc_bootstrap,
)
from grpcmesh_control.mesh.xds import SnapshotCache

from .envoy_views import cluster, hcm, listener, route, route_config

MESH = """
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {name: shop}
spec:
  grpc: {port: 50051, services: [demo.Shop]}
  proxyless: true
  backends:
    - name: prices
    - name: quotes
      external: {host: quotes.example.com, port: 443, tls: true}
---
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {name: prices}
spec:
  grpc: {port: 50052, services: [demo.Prices]}
  versions:
    - {name: v1, weight: 80}
    - {name: v2, weight: 20}
    - {name: v3, weight: 0}
  trafficPolicy:
    timeout: 2s
    retries: {attempts: 9, retryOn: [UNAVAILABLE, RESOURCE_EXHAUSTED]}
    circuitBreaker: {maxRequests: 64}
    outlierDetection: {consecutive5xx: 3}
  methods:
    - name: demo.Prices/Slow
      timeout: 250ms
    - name: demo.Prices/Watch
    - name: demo.Prices/Broken
      fault: {abort: {grpcStatus: UNAVAILABLE, percentage: 100}}
"""
CATALOG = MethodCatalog.of(
    {
        "demo.Prices": [
            MethodInfo("Get", Idempotency.NO_SIDE_EFFECTS),
            MethodInfo("Slow", Idempotency.NO_SIDE_EFFECTS),
            MethodInfo("Set"),
            MethodInfo("Broken"),
            MethodInfo("Watch", Idempotency.NO_SIDE_EFFECTS, server_streaming=True),
        ],
        "demo.Shop": [MethodInfo("Buy")],
    }
)
ENDPOINTS = {
    "prices": [Endpoint("10.0.0.1", 15006, "v1"), Endpoint("10.0.0.2", 15006, "v2")],
}
NODE = ProxyNode(NodeId.proxyless("shop", "shop-0"), egress_port=15301, local_address="10.1.1.1")


@pytest.fixture
def registry() -> Registry:
    services = parse_mesh_services_yaml(MESH, source="mesh.yaml", catalog=CATALOG)
    return Registry.build(services, ENDPOINTS, CATALOG)


@pytest.fixture
def shop(registry: Registry) -> Snapshot:
    return build_snapshot(registry, NODE)


def seconds(duration: Any) -> float:
    return float(duration.ToTimedelta() / timedelta(seconds=1))


def api_hcm(snapshot: Snapshot, name: str) -> Any:
    manager = http_connection_manager_pb2.HttpConnectionManager()
    assert listener(snapshot, name).api_listener.api_listener.Unpack(manager)
    return manager


def test_proxyless_node_ids_name_a_service_and_a_replica() -> None:
    node = NodeId.parse("proxyless~shop~shop-7d9f8-abcde")
    assert (node.kind, node.name, node.replica) == (NodeKind.PROXYLESS, "shop", "shop-7d9f8-abcde")
    assert node.envoy_cluster == "shop"
    assert str(node) == "proxyless~shop~shop-7d9f8-abcde"
    for bad in ("proxyless~shop", "proxyless~shop~", "proxyless~Shop~0"):
        with pytest.raises(InvalidNodeId):
            NodeId.parse(bad)
    # Replicas share a group; the sidecar of the same replica is another group.
    assert node_group("proxyless~shop~a") == node_group("proxyless~shop~b")
    assert node_group("proxyless~shop~a") != node_group("sidecar~shop~a")


def test_a_listener_per_backend_is_what_an_xds_target_resolves_to(shop: Snapshot) -> None:
    assert [item.name for item in shop.listeners] == ["prices", "quotes"]
    for name in ("prices", "quotes"):
        item = listener(shop, name)
        assert not item.HasField("address") and not item.filter_chains  # binds nothing
        manager = api_hcm(shop, name)
        assert manager.rds.route_config_name == name
        assert manager.rds.config_source.HasField("ads")
        # gRPC requires the router last; the fault filter before it.
        assert [f.name for f in manager.http_filters] == [
            "envoy.filters.http.fault",
            "envoy.filters.http.router",
        ]


def test_routes_carry_the_backends_split_retries_and_faults_but_no_deadline(
    shop: Snapshot,
) -> None:
    (host,) = route_config(shop, "prices").virtual_hosts
    assert list(host.domains) == ["prices", "prices:*"]
    get = route(host, "/demo.Prices/Get").route
    weights = {c.name: c.weight.value for c in get.weighted_clusters.clusters}
    assert weights == {"prices|v1": 80, "prices|v2": 20}  # weight 0 is not routed
    # gRPC's attempts are capped at 5; the statuses are gRPC's names.
    assert get.retry_policy.retry_on == "unavailable,resource-exhausted"
    assert get.retry_policy.num_retries.value == GRPC_MAX_ATTEMPTS - 1
    assert not route(host, "/demo.Prices/Set").route.HasField("retry_policy")  # not safe
    # The deadline is the backend's sidecar's to keep (grpcio fires config deadlines early).
    for item in host.routes:
        assert not item.route.HasField("max_stream_duration")
    broken = route(host, "/demo.Prices/Broken")
    assert "envoy.filters.http.fault" in broken.typed_per_filter_config
    assert not route(host, "/demo.Prices/Get").typed_per_filter_config


def test_clusters_are_round_robin_eds_with_the_request_limit(shop: Snapshot) -> None:
    names = {c.name for c in shop.clusters}
    assert names == {"prices|v1", "prices|v2", "prices|v3", SIDECAR_EGRESS_CLUSTER}
    v1 = cluster(shop, "prices|v1")
    assert v1.type == cluster_pb2.Cluster.DiscoveryType.EDS
    assert v1.eds_cluster_config.eds_config.HasField("ads")
    assert v1.lb_policy == cluster_pb2.Cluster.LbPolicy.ROUND_ROBIN
    assert [t.max_requests.value for t in v1.circuit_breakers.thresholds] == [64]
    # What gRPC does not do, it is not sent.
    assert not v1.HasField("outlier_detection")
    assert not v1.typed_extension_protocol_options
    # The load assignments are the sidecars': v1's endpoints first, v2's as its failover.
    (assignment,) = [a for a in shop.endpoints if a.cluster_name == "prices|v1"]
    by_priority = {
        loc.priority: [e.endpoint.address.socket_address.address for e in loc.lb_endpoints]
        for loc in assignment.endpoints
    }
    assert by_priority == {0: ["10.0.0.1"], 1: ["10.0.0.2"]}


def test_an_external_backend_goes_through_the_replicas_own_sidecar(shop: Snapshot) -> None:
    (host,) = route_config(shop, "quotes").virtual_hosts
    assert list(host.domains) == ["quotes", "quotes:*"]
    assert route(host, "/any.Service/Method").route.cluster == SIDECAR_EGRESS_CLUSTER
    (assignment,) = [a for a in shop.endpoints if a.cluster_name == SIDECAR_EGRESS_CLUSTER]
    (endpoint,) = assignment.endpoints[0].lb_endpoints
    address = endpoint.endpoint.address.socket_address
    assert (address.address, address.port_value) == ("10.1.1.1", 15301)


def test_no_external_backend_no_sidecar_cluster(registry: Registry) -> None:
    snapshot = build_snapshot(registry, ProxyNode(NodeId.proxyless("prices", "0")))
    assert not snapshot.listeners and not snapshot.clusters  # prices calls nothing


def test_a_proxyless_client_of_an_unknown_service_gets_nothing(registry: Registry) -> None:
    with pytest.raises(UnknownNode):
        build_snapshot(registry, ProxyNode(NodeId.proxyless("nobody", "0")))


def test_the_backends_sidecar_bounds_each_route_by_its_deadline(registry: Registry) -> None:
    sidecar = build_snapshot(registry, ProxyNode(NodeId.sidecar("prices", "prices-0")))
    (host,) = hcm(listener(sidecar, "inbound")).route_config.virtual_hosts
    bounds = {
        path: seconds(route(host, path).route.max_stream_duration.grpc_timeout_header_max)
        for path in ("/demo.Prices/Get", "/demo.Prices/Slow", "/demo.Prices/Watch", "/health")
    }
    # The service's timeout, a method's own, none for a stream, none outside its routes.
    assert bounds == {
        "/demo.Prices/Get": 2.0,
        "/demo.Prices/Slow": 0.25,
        "/demo.Prices/Watch": 0.0,
        "/health": 0.0,
    }
    assert all(r.route.cluster == "inbound|50052" for r in host.routes)
    assert host.routes[-1].match.prefix == "/"


def test_the_bootstrap_names_the_control_plane_and_the_node() -> None:
    bootstrap = grpc_bootstrap(NODE, "10.9.9.9:18000")
    assert bootstrap["xds_servers"] == [
        {
            "server_uri": "10.9.9.9:18000",
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }
    ]
    node = bootstrap["node"]
    assert (node["id"], node["cluster"]) == ("proxyless~shop~shop-0", "shop")
    # What the control plane reads back is the node it was made from.
    assert ProxyNode.from_node(node["id"], json.loads(json.dumps(node["metadata"]))) == NODE


def test_a_backend_change_rebuilds_its_proxyless_callers(registry: Registry) -> None:
    cache = SnapshotCache()
    publisher = Publisher(cache, CATALOG)
    services = parse_mesh_services_yaml(MESH, source="mesh.yaml", catalog=CATALOG)
    publisher.update(services, ENDPOINTS)
    cache.connected(str(NODE.id), NODE.metadata())
    assert publisher.rebuild().ok
    group = cache.group_of(str(NODE.id))
    before = cache.snapshot(group)
    assert before is not None
    moved = {"prices": [Endpoint("10.0.0.9", 15006, "v1")]}
    publisher.update(services, moved)
    outcome = publisher.rebuild()
    after = cache.snapshot(group)
    assert outcome.built == 1 and after is not None and after.version != before.version
