"""Snapshots: content-hash versions (stable across processes, sensitive to every change) and the
consistency rules, one test per rule."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog
from grpcmesh_control.mesh.translate import (
    PUSH_ORDER,
    InconsistentSnapshot,
    NodeId,
    ProxyNode,
    Registry,
    ResourceType,
    Snapshot,
    build_snapshot,
)
from grpcmesh_control.mesh.translate.routes import inbound_route_config
from tests.unit.examples import REPO

from .conftest import ENDPOINTS

ORDERS = ProxyNode(NodeId.sidecar("orders", "0"))
INGRESS = ProxyNode(NodeId.ingress())

# Computes the reference mesh's snapshot versions in a fresh interpreter.
_VERSIONS_SCRIPT = """
import pathlib
from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.model import Endpoint, parse_mesh_services_yaml
from grpcmesh_control.mesh.translate import NodeId, ProxyNode, Registry, build_snapshot
catalog = load_catalog()
services = [
    svc
    for path in sorted(pathlib.Path("manifests/examples").glob("*.yaml"))
    for svc in parse_mesh_services_yaml(path.read_text(), source=str(path), catalog=catalog)
]
endpoints = {ENDPOINTS!r}
endpoints = {{k: [Endpoint(*e) for e in v] for k, v in endpoints.items()}}
registry = Registry.build(services, endpoints, catalog)
for node in (ProxyNode(NodeId.sidecar("orders", "0")), ProxyNode(NodeId.ingress())):
    print(build_snapshot(registry, node).version)
"""


def _versions(registry: Registry) -> list[str]:
    return [build_snapshot(registry, node).version for node in (ORDERS, INGRESS)]


# --- versions ---------------------------------------------------------------------------------


def test_version_is_stable_across_processes(registry: Registry) -> None:
    plain = {k: [(e.address, e.port, e.version, e.ready) for e in v] for k, v in ENDPOINTS.items()}
    script = _VERSIONS_SCRIPT.format(ENDPOINTS=plain)
    outputs = set()
    for seed in ("1", "2"):  # different hash seeds: set/dict order must not leak into versions
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(tuple(run.stdout.split()))
    assert outputs == {tuple(_versions(registry))}


def test_version_does_not_depend_on_input_order(
    services: dict[str, MeshService], catalog: MethodCatalog, registry: Registry
) -> None:
    shuffled = {k: list(reversed(v)) for k, v in reversed(list(ENDPOINTS.items()))}
    reordered = Registry.build(list(reversed(list(services.values()))), shuffled, catalog)
    assert _versions(reordered) == _versions(registry)
    snapshot = build_snapshot(registry, ORDERS)
    rebuilt = Snapshot(
        snapshot.node_id,
        clusters=tuple(reversed(snapshot.clusters)),
        endpoints=tuple(reversed(snapshot.endpoints)),
        listeners=tuple(reversed(snapshot.listeners)),
        routes=snapshot.routes,
    )
    assert rebuilt.version == snapshot.version


def test_replicas_of_one_service_share_a_version(registry: Registry) -> None:
    first = build_snapshot(registry, ProxyNode(NodeId.sidecar("orders", "a")))
    second = build_snapshot(registry, ProxyNode(NodeId.sidecar("orders", "b")))
    assert first.version == second.version
    assert first.node_id != second.node_id


def test_endpoint_change_moves_only_the_eds_version(
    services: dict[str, MeshService], catalog: MethodCatalog, registry: Registry
) -> None:
    before = build_snapshot(registry, ORDERS)
    endpoints = {**ENDPOINTS, "inventory": [Endpoint("10.0.1.1", 15006, "v1", ready=False)]}
    after = build_snapshot(Registry.build(services.values(), endpoints, catalog), ORDERS)
    assert after.version != before.version
    changed = {t for t in PUSH_ORDER if after.versions[t] != before.versions[t]}
    assert changed == {ResourceType.ENDPOINT}


def test_policy_change_moves_the_route_version(
    services: dict[str, MeshService], catalog: MethodCatalog, registry: Registry
) -> None:
    before = build_snapshot(registry, ORDERS)
    catalog_svc = services["catalog"]
    slower = replace(
        catalog_svc,
        traffic_policy=replace(catalog_svc.traffic_policy, timeout=timedelta(seconds=2)),
    )
    changed_registry = Registry.build({**services, "catalog": slower}.values(), ENDPOINTS, catalog)
    after = build_snapshot(changed_registry, ORDERS)
    assert after.version != before.version
    changed = {t for t in PUSH_ORDER if after.versions[t] != before.versions[t]}
    assert changed == {ResourceType.ROUTE}


def test_by_type_is_keyed_by_type_url_then_name(registry: Registry) -> None:
    snapshot = build_snapshot(registry, ORDERS)
    by_type = snapshot.by_type()
    assert list(by_type) == [t.value for t in PUSH_ORDER]
    assert list(by_type[ResourceType.LISTENER]) == ["egress", "inbound"]
    assert list(by_type[ResourceType.ROUTE]) == ["egress"]


def test_every_reference_node_is_consistent(registry: Registry) -> None:
    # Snapshot() raises when inconsistent, so building is the assertion.
    for svc in registry.services:
        build_snapshot(registry, ProxyNode(NodeId.sidecar(svc.name, "0")))
    build_snapshot(registry, INGRESS)


# --- consistency rules -------------------------------------------------------------------------


@pytest.fixture
def good(registry: Registry) -> Snapshot:
    return build_snapshot(registry, ORDERS)


def _broken(good: Snapshot, **parts: object) -> str:
    fields = {
        "clusters": good.clusters,
        "endpoints": good.endpoints,
        "listeners": good.listeners,
        "routes": good.routes,
        **parts,
    }
    with pytest.raises(InconsistentSnapshot) as caught:
        Snapshot(good.node_id, **fields)  # type: ignore[arg-type]
    assert str(caught.value).startswith(f"inconsistent snapshot for {good.node_id}: ")
    return str(caught.value)


def test_rule_unique_names(good: Snapshot) -> None:
    message = _broken(good, clusters=(*good.clusters, good.clusters[0]))
    assert "cluster 'catalog|v1' appears 2 times" in message


def test_rule_every_eds_cluster_has_a_load_assignment(good: Snapshot) -> None:
    without = tuple(a for a in good.endpoints if a.cluster_name != "payments|v2")
    assert "EDS cluster 'payments|v2' has no load assignment" in _broken(good, endpoints=without)


def test_rule_every_load_assignment_has_an_eds_cluster(good: Snapshot) -> None:
    clusters = tuple(c for c in good.clusters if c.name != "payments|v2")
    message = _broken(good, clusters=clusters)
    assert "load assignment 'payments|v2' has no EDS cluster" in message
    # ...and the route still pointing at it is caught too:
    assert "route configuration 'egress' targets missing cluster 'payments|v2'" in message


def test_rule_every_rds_name_exists(good: Snapshot) -> None:
    message = _broken(good, routes=())
    assert "listener 'egress' references missing route configuration 'egress'" in message


def test_rule_every_route_configuration_is_referenced(good: Snapshot) -> None:
    stray = inbound_route_config(50051)  # named "inbound", but the inbound one is inline
    message = _broken(good, routes=(*good.routes, stray))
    assert "route configuration 'inbound' is not referenced by any listener" in message


def test_rule_inline_routes_target_existing_clusters(good: Snapshot) -> None:
    clusters = tuple(c for c in good.clusters if not c.name.startswith("inbound|"))
    message = _broken(good, clusters=clusters)
    assert "route configuration 'inbound' targets missing cluster 'inbound|50051'" in message


def test_rule_no_two_listeners_bind_one_port(good: Snapshot) -> None:
    clash = listener_pb2.Listener()
    clash.CopyFrom(next(lst for lst in good.listeners if lst.name == "inbound"))
    clash.name = "inbound-again"
    assert "2 listeners bind 0.0.0.0:15006" in _broken(good, listeners=(*good.listeners, clash))


def test_static_clusters_need_no_load_assignment() -> None:
    static = cluster_pb2.Cluster(name="x", type=cluster_pb2.Cluster.DiscoveryType.STATIC)
    assert Snapshot("n", clusters=(static,)).clusters == (static,)


def test_the_empty_snapshot_is_consistent() -> None:
    assert len(Snapshot("n").version) == 16
