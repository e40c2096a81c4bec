"""Snapshots scale with services, not proxies: replicas share one snapshot group, and a rebuild
builds only the groups that read a changed service (counted by a builder that records calls)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from grpcmesh_control.mesh.model import (
    Backend,
    Endpoint,
    GrpcSpec,
    MeshService,
    MethodCatalog,
    VersionTarget,
)
from grpcmesh_control.mesh.publisher import Publisher
from grpcmesh_control.mesh.translate import (
    NodeId,
    ProxyNode,
    Registry,
    Snapshot,
    SnapshotBuilder,
    build_snapshot,
    node_group,
)
from grpcmesh_control.mesh.xds import CLUSTER, SnapshotCache

# frontend -> orders -> {payments, hub}; search -> hub; everyone else is a leaf of nobody.
CALLS = {
    "frontend": ("orders",),
    "orders": ("payments", "hub"),
    "search": ("hub",),
    "payments": (),
    "hub": (),
}


def service(name: str, backends: tuple[str, ...], canary: int = 10) -> MeshService:
    return MeshService(
        name,
        "default",
        GrpcSpec(50051, (f"test.v1.{name.capitalize()}",)),
        versions=(VersionTarget("v1", 100 - canary), VersionTarget("v2", canary)),
        backends=tuple(Backend(b) for b in backends),
    )


def endpoints(name: str, count: int = 2) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"127.0.0.{i + 1}", 41000 + i, "v1") for i in range(count))


class CountingBuilder:
    """``build_snapshot``, counting the builds per service (node name)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, registry: Registry, node: ProxyNode) -> Snapshot:
        self.calls[node.id.name] += 1
        return build_snapshot(registry, node)


class Mesh:
    def __init__(self) -> None:
        self.services = {name: service(name, backends) for name, backends in CALLS.items()}
        self.endpoints = {name: endpoints(name) for name in CALLS}

    def push(self, publisher: Publisher) -> int:
        publisher.update(self.services.values(), self.endpoints)
        outcome = publisher.rebuild()
        assert outcome.ok, outcome.error
        return outcome.built


@pytest.fixture
def builder() -> CountingBuilder:
    return CountingBuilder()


@pytest.fixture
def cache() -> SnapshotCache:
    return SnapshotCache()


@pytest.fixture
def publisher(cache: SnapshotCache, builder: CountingBuilder) -> Publisher:
    return Publisher(cache, build=builder)


def sidecar(name: str, replica: int, **fields: object) -> tuple[str, dict[str, object]]:
    node = ProxyNode(NodeId.sidecar(name, str(replica)), **fields)  # type: ignore[arg-type]
    return str(node.id), node.metadata()


def connect_replicas(cache: SnapshotCache, replicas: int = 3) -> list[str]:
    ids = []
    for name in CALLS:
        for replica in range(replicas):
            node_id, metadata = sidecar(name, replica)
            cache.connected(node_id, metadata)
            ids.append(node_id)
    return ids


def test_replicas_with_the_same_metadata_share_one_snapshot(
    publisher: Publisher, cache: SnapshotCache, builder: CountingBuilder
) -> None:
    Mesh().push(publisher)
    connect_replicas(cache, replicas=3)
    # One build per service, not per replica: later replicas join the group built for the first.
    assert builder.calls == Counter(dict.fromkeys(CALLS, 1))
    assert len(cache.groups()) == len(CALLS)
    replicas = [f"sidecar~orders~{r}" for r in range(3)]
    assert len({cache.group_of(n) for n in replicas}) == 1
    snapshots = [cache.node_snapshot(n) for n in replicas]
    assert snapshots[0] is not None and all(s is snapshots[0] for s in snapshots)


def test_a_replica_with_other_metadata_gets_a_group_of_its_own(
    publisher: Publisher, cache: SnapshotCache
) -> None:
    Mesh().push(publisher)
    cache.connected(*sidecar("orders", 0))
    # A pod-local address (pods sharing the host's network) makes another snapshot.
    cache.connected(*sidecar("orders", 1, local_address="127.0.0.7"))
    first, second = cache.node_snapshot("sidecar~orders~0"), cache.node_snapshot("sidecar~orders~1")
    assert cache.group_of("sidecar~orders~0") != cache.group_of("sidecar~orders~1")
    assert first is not None and second is not None and first.version != second.version


def test_the_group_ignores_the_replica_and_nothing_else() -> None:
    base = ProxyNode(NodeId.sidecar("orders", "a"))
    assert node_group("sidecar~orders~a", base.metadata()) == node_group(
        "sidecar~orders~b", base.metadata()
    )
    for change in (
        {"inbound_port": 15007},
        {"egress_port": 15002},
        {"app_port": 9000},
        {"bind_address": "127.0.0.1"},
        {"ca_bundle": "/etc/other.pem"},
        {"otlp_collector": "127.0.0.1:4317"},
        {"access_log": True},
        {"local_address": "127.0.0.9"},
    ):
        other = dataclasses.replace(base, **change)
        assert node_group("sidecar~orders~a", other.metadata()) != node_group(
            "sidecar~orders~a", base.metadata()
        ), change
    assert node_group("router~x", {}) == "router~x"  # unparseable: a group of its own


def test_a_leaf_change_rebuilds_only_the_leaf_and_its_callers(
    publisher: Publisher, cache: SnapshotCache, builder: CountingBuilder
) -> None:
    mesh = Mesh()
    mesh.push(publisher)
    connect_replicas(cache)
    builder.calls.clear()

    mesh.endpoints["payments"] = endpoints("payments", 3)  # EDS of its callers
    assert mesh.push(publisher) == 2
    assert builder.calls == Counter({"payments": 1, "orders": 1})

    builder.calls.clear()
    mesh.services["payments"] = service("payments", (), canary=30)  # RDS of its callers
    assert mesh.push(publisher) == 2
    assert builder.calls == Counter({"payments": 1, "orders": 1})

    builder.calls.clear()
    assert mesh.push(publisher) == 0  # no change, no build
    assert builder.calls == Counter()


def test_a_hub_change_rebuilds_every_caller(
    publisher: Publisher, cache: SnapshotCache, builder: CountingBuilder
) -> None:
    mesh = Mesh()
    mesh.push(publisher)
    connect_replicas(cache)
    builder.calls.clear()
    mesh.services["hub"] = service("hub", (), canary=50)
    assert mesh.push(publisher) == 3
    assert builder.calls == Counter({"hub": 1, "orders": 1, "search": 1})


def test_a_new_backend_is_a_dependency_before_it_exists(
    publisher: Publisher, cache: SnapshotCache, builder: CountingBuilder
) -> None:
    mesh = Mesh()
    mesh.services["search"] = service("search", ("hub", "ranking"))  # ranking: not yet
    mesh.push(publisher)
    connect_replicas(cache)
    builder.calls.clear()
    mesh.services["ranking"] = service("ranking", ())
    mesh.endpoints["ranking"] = endpoints("ranking")
    assert mesh.push(publisher) == 1
    assert builder.calls == Counter({"search": 1})
    snapshot = cache.node_snapshot("sidecar~search~0")
    assert snapshot is not None and "ranking|v1" in snapshot.of(CLUSTER).resources


def test_incremental_rebuilds_publish_what_a_full_rebuild_would(
    publisher: Publisher, cache: SnapshotCache
) -> None:
    mesh = Mesh()
    mesh.push(publisher)
    nodes = connect_replicas(cache, replicas=2)
    for change in range(6):
        name = list(CALLS)[change % len(CALLS)]
        if change % 2:
            mesh.endpoints[name] = endpoints(name, 1 + change % 3)
        else:
            mesh.services[name] = service(name, CALLS[name], canary=10 + 5 * change)
        mesh.push(publisher)
    fresh = SnapshotCache()
    full = Publisher(fresh)
    for node_id in nodes:
        fresh.connected(node_id, cache.node(node_id).metadata)
    mesh.push(full)
    for node_id in nodes:
        ours, theirs = cache.node_snapshot(node_id), fresh.node_snapshot(node_id)
        assert ours is not None and theirs is not None
        assert ours.version == theirs.version, node_id


def test_a_new_catalog_rebuilds_every_group(
    publisher: Publisher, cache: SnapshotCache, builder: CountingBuilder
) -> None:
    mesh = Mesh()
    mesh.push(publisher)
    connect_replicas(cache)
    builder.calls.clear()
    publisher.set_catalog(MethodCatalog())  # retry safety and streaming: every route
    assert mesh.push(publisher) == len(CALLS)


def test_acks_are_per_node_within_a_shared_group(
    publisher: Publisher, cache: SnapshotCache
) -> None:
    Mesh().push(publisher)
    connect_replicas(cache, replicas=2)
    snapshot = cache.node_snapshot("sidecar~orders~0")
    assert snapshot is not None
    version = snapshot.of(CLUSTER).version
    cache.record_ack("sidecar~orders~0", CLUSTER, version, {CLUSTER})
    assert cache.node("sidecar~orders~0").acked_snapshot == snapshot.version
    assert cache.node("sidecar~orders~1").acked_snapshot is None


def test_the_remembering_builder_builds_what_build_snapshot_builds() -> None:
    mesh = Mesh()
    remembering = SnapshotBuilder()
    nodes = [
        *(ProxyNode(NodeId.sidecar(name, "0")) for name in CALLS),
        ProxyNode(NodeId.sidecar("orders", "1"), local_address="127.0.0.7"),
        ProxyNode(NodeId.ingress()),
    ]
    for change in range(4):
        registry = Registry.build(mesh.services.values(), mesh.endpoints)
        for node in nodes:
            assert remembering(registry, node).version == build_snapshot(registry, node).version
        # The hub (every caller's backend) changes: what was remembered of it must not be reused.
        if change % 2:
            mesh.endpoints["hub"] = endpoints("hub", 1 + change)
        else:
            mesh.services["hub"] = service("hub", (), canary=20 + change)
    assert remembering.pack_cache is not None and len(remembering.pack_cache) > 0
