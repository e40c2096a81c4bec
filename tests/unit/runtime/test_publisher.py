"""The publisher: debounced rebuilds (fake clock, no sleeping), all-or-nothing publishing, and
snapshots for nodes as they connect."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from grpcmesh_control.local.sources import ResourceSet
from grpcmesh_control.mesh.errors import InconsistentSnapshot
from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog
from grpcmesh_control.mesh.publisher import MeshInputs, Publisher, RebuildOutcome
from grpcmesh_control.mesh.translate import NodeId, ProxyNode, Registry, Snapshot, build_snapshot
from grpcmesh_control.mesh.xds import CLUSTER, ENDPOINT, LISTENER, SnapshotCache
from grpcmesh_control.mesh.xds.streams import SotwStream

from .conftest import FakeClock

ORDERS = "sidecar~orders~0"
WINDOW = 0.05
MAX_DELAY = 0.5


def payments_at(*ports: int) -> dict[str, tuple[Endpoint, ...]]:
    return {"payments": tuple(Endpoint("127.0.0.1", port, "v1") for port in ports)}


def assignment_ports(cache: SnapshotCache, node_id: str, cluster: str) -> list[int]:
    snapshot = cache.node_snapshot(node_id)
    assert snapshot is not None, f"{node_id} has no snapshot"
    assignment = endpoint_pb2.ClusterLoadAssignment()
    snapshot.of(ENDPOINT).resources[cluster].Unpack(assignment)
    return [
        lb.endpoint.address.socket_address.port_value
        for locality in assignment.endpoints
        for lb in locality.lb_endpoints
    ]


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[RebuildOutcome] = []

    def __call__(self, outcome: RebuildOutcome) -> None:
        self.outcomes.append(outcome)


class FlakyBuilder:
    """``build_snapshot``, or an ``InconsistentSnapshot`` for the nodes in ``failing``."""

    def __init__(self) -> None:
        self.failing: set[str] = set()

    def __call__(self, registry: Registry, node: ProxyNode) -> Snapshot:
        if str(node.id) in self.failing:
            raise InconsistentSnapshot(str(node.id), ["injected by the test"])
        return build_snapshot(registry, node)


@pytest.fixture
def services(examples: ResourceSet) -> tuple[MeshService, ...]:
    return examples.services


@pytest.fixture
def cache() -> SnapshotCache:
    return SnapshotCache()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def builder() -> FlakyBuilder:
    return FlakyBuilder()


@pytest.fixture
def publisher(
    cache: SnapshotCache,
    catalog: MethodCatalog,
    clock: FakeClock,
    recorder: Recorder,
    builder: FlakyBuilder,
) -> Publisher:
    return Publisher(
        cache,
        catalog,
        clock=clock,
        window=WINDOW,
        max_delay=MAX_DELAY,
        build=builder,
        on_rebuild=recorder,
    )


@asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tasks:
        loop = tasks.create_task(publisher.run())
        try:
            yield
        finally:
            loop.cancel()


async def settled(publisher: Publisher) -> None:
    async with asyncio.timeout(5):
        await publisher.wait_settled()


def connect(cache: SnapshotCache, node_id: str, metadata: Mapping[str, Any] | None = None) -> None:
    cache.connected(node_id, dict(metadata or {}))


# --- debounce ----------------------------------------------------------------------------------


async def test_a_burst_of_updates_is_one_rebuild(
    publisher: Publisher,
    cache: SnapshotCache,
    clock: FakeClock,
    recorder: Recorder,
    services: tuple[MeshService, ...],
) -> None:
    publisher.update(services, {})
    publisher.rebuild()
    connect(cache, ORDERS)
    recorder.outcomes.clear()
    async with running(publisher):
        for port in range(41001, 41011):
            publisher.update(services, payments_at(port))
        await clock.sleeping()
        assert recorder.outcomes == []  # nothing before the window has passed
        clock.advance(WINDOW)
        await settled(publisher)
    assert len(recorder.outcomes) == 1
    assert recorder.outcomes[0].ok
    assert assignment_ports(cache, ORDERS, "payments|v1") == [41010]  # the last update won
    assert clock.sleeps == [WINDOW]


async def test_an_update_during_the_window_restarts_it(
    publisher: Publisher,
    clock: FakeClock,
    recorder: Recorder,
    services: tuple[MeshService, ...],
) -> None:
    async with running(publisher):
        publisher.update(services, payments_at(41001))
        await clock.sleeping()
        publisher.update(services, payments_at(41002))
        clock.advance(WINDOW)
        await clock.sleeping()  # not quiet: waits another window instead of rebuilding
        assert recorder.outcomes == []
        clock.advance(WINDOW)
        await settled(publisher)
    assert len(recorder.outcomes) == 1
    assert clock.now == pytest.approx(2 * WINDOW)


async def test_a_steady_stream_of_updates_is_rebuilt_by_the_max_delay(
    publisher: Publisher,
    clock: FakeClock,
    recorder: Recorder,
    services: tuple[MeshService, ...],
) -> None:
    ports = iter(range(41001, 42000))
    # Every window sees a new update, so it is never quiet.
    clock.on_sleep = lambda seconds: publisher.update(services, payments_at(next(ports)))
    async with running(publisher):
        publisher.update(services, payments_at(next(ports)))
        await settled(publisher)
    assert len(recorder.outcomes) == 1
    # The first window that ends past the max delay (float sums may need one more window).
    assert MAX_DELAY - 1e-9 <= clock.now <= MAX_DELAY + WINDOW + 1e-9


async def test_separate_bursts_are_separate_rebuilds(
    publisher: Publisher,
    clock: FakeClock,
    recorder: Recorder,
    services: tuple[MeshService, ...],
) -> None:
    async with running(publisher):
        for port in (41001, 41002):
            publisher.update(services, payments_at(port))
            await clock.sleeping()
            clock.advance(WINDOW)
            await settled(publisher)
    assert [o.version for o in recorder.outcomes] == [
        MeshInputs.of(services, payments_at(port)).version for port in (41001, 41002)
    ]


# --- failures keep the last good snapshots ---------------------------------------------------


async def test_a_failed_rebuild_keeps_the_last_good_snapshots(
    publisher: Publisher,
    cache: SnapshotCache,
    builder: FlakyBuilder,
    services: tuple[MeshService, ...],
) -> None:
    publisher.update(services, payments_at(41001))
    publisher.rebuild()
    connect(cache, ORDERS)
    connect(cache, "ingress~gateway")
    good = {n: cache.node_snapshot(n) for n in (ORDERS, "ingress~gateway")}
    good_version = publisher.version

    # The ingress would succeed, the sidecar fails: all or nothing, so neither changes.
    builder.failing.add(ORDERS)
    publisher.update(services, payments_at(41002))
    outcome = publisher.rebuild()
    assert not outcome.ok
    assert outcome.error is not None and "injected by the test" in outcome.error
    assert {n: cache.node_snapshot(n) for n in good} == good
    assert publisher.version == good_version
    assert any("injected by the test" in p for p in publisher.problems())

    builder.failing.clear()
    assert publisher.rebuild().ok
    assert assignment_ports(cache, ORDERS, "payments|v1") == [41002]
    assert publisher.version == MeshInputs.of(services, payments_at(41002)).version
    assert publisher.last_error is None
    assert not any("injected" in p for p in publisher.problems())


def test_registry_problems_are_reported(
    publisher: Publisher, services: tuple[MeshService, ...]
) -> None:
    # The Kubernetes path tolerates an unknown backend; the registry reports it.
    orders = next(s for s in services if s.name == "orders")
    publisher.update([orders], {})
    publisher.rebuild()
    assert publisher.problems() == [
        "MeshService default/orders: spec.backends[0].name: no MeshService catalog; "
        "not routable until it exists",
        "MeshService default/orders: spec.backends[1].name: no MeshService inventory; "
        "not routable until it exists",
        "MeshService default/orders: spec.backends[2].name: no MeshService payments; "
        "not routable until it exists",
    ]


# --- nodes as they connect ---------------------------------------------------------------------


def node_message(node_id: str, metadata: Mapping[str, Any]) -> base_pb2.Node:
    struct = struct_pb2.Struct()
    struct.update(dict(metadata))
    return base_pb2.Node(id=node_id, metadata=struct)


def test_a_new_node_is_answered_on_its_first_request(
    publisher: Publisher, cache: SnapshotCache, services: tuple[MeshService, ...]
) -> None:
    publisher.update(services, payments_at(41001))
    publisher.rebuild()
    node = ProxyNode(NodeId.sidecar("orders", "0"), inbound_port=41100, egress_port=41101)
    stream = SotwStream(cache)
    (clusters,) = stream.on_request(
        discovery_pb2.DiscoveryRequest(
            node=node_message(str(node.id), node.metadata()), type_url=CLUSTER
        )
    )
    names = set()
    for packed in clusters.resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        names.add(cluster.name)
    assert {"payments|v1", "catalog|v1", "inbound|50051"} <= names
    (listeners,) = stream.on_request(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
    ports = set()
    for packed in listeners.resources:
        listener = listener_pb2.Listener()
        packed.Unpack(listener)
        ports.add(listener.address.socket_address.port_value)
    assert ports == {41100, 41101}  # from the node's own metadata


def test_a_node_that_reconnects_with_other_ports_gets_a_new_snapshot(
    publisher: Publisher, cache: SnapshotCache, services: tuple[MeshService, ...]
) -> None:
    publisher.update(services, {})
    publisher.rebuild()
    first = ProxyNode(NodeId.sidecar("orders", "0"), inbound_port=41100)
    connect(cache, ORDERS, first.metadata())
    before = cache.node_snapshot(ORDERS)
    cache.disconnected(ORDERS)
    connect(cache, ORDERS, ProxyNode(first.id, inbound_port=41200).metadata())
    after = cache.node_snapshot(ORDERS)
    assert before is not None and after is not None and before.version != after.version


def test_acks_do_not_rebuild_a_node(
    publisher: Publisher,
    cache: SnapshotCache,
    builder: FlakyBuilder,
    services: tuple[MeshService, ...],
) -> None:
    publisher.update(services, {})
    publisher.rebuild()
    connect(cache, ORDERS)
    builder.failing.add(ORDERS)  # would record a problem if the listener rebuilt
    cache.record_ack(ORDERS, CLUSTER, "v", {CLUSTER})
    assert publisher.node_problem(ORDERS) is None


def test_a_node_of_an_unknown_service_waits_without_a_snapshot(
    publisher: Publisher, cache: SnapshotCache, services: tuple[MeshService, ...]
) -> None:
    publisher.update(services, {})
    publisher.rebuild()
    stream = SotwStream(cache)
    request = discovery_pb2.DiscoveryRequest(
        node=node_message("sidecar~shipping~0", {}), type_url=CLUSTER
    )
    assert stream.on_request(request) == []  # no answer: the stream waits
    assert cache.node_snapshot("sidecar~shipping~0") is None
    assert publisher.node_problem("sidecar~shipping~0") == (
        "node sidecar~shipping~0: no MeshService shipping"
    )


def test_a_deleted_service_takes_its_nodes_snapshots_away(
    publisher: Publisher, cache: SnapshotCache, services: tuple[MeshService, ...]
) -> None:
    publisher.update(services, {})
    publisher.rebuild()
    connect(cache, "sidecar~catalog~0")
    assert cache.node_snapshot("sidecar~catalog~0") is not None
    # catalog is gone (orders, its caller, goes too so the set stays consistent)
    publisher.update([s for s in services if s.name not in ("catalog", "orders")], {})
    assert publisher.rebuild().ok
    assert cache.node_snapshot("sidecar~catalog~0") is None
    assert "no MeshService catalog" in (publisher.node_problem("sidecar~catalog~0") or "")
    publisher.update(services, {})
    publisher.rebuild()
    assert cache.node_snapshot("sidecar~catalog~0") is not None
    assert publisher.node_problem("sidecar~catalog~0") is None


@pytest.mark.parametrize(
    ("node_id", "metadata", "expected"),
    [
        ("router~x", {}, "node id 'router~x'"),
        (ORDERS, {"grpcmesh": {"inbound_port": "15006"}}, "metadata.grpcmesh.inbound_port"),
    ],
)
def test_a_node_breaking_the_naming_conventions_gets_a_problem(
    publisher: Publisher,
    cache: SnapshotCache,
    services: tuple[MeshService, ...],
    node_id: str,
    metadata: dict[str, Any],
    expected: str,
) -> None:
    publisher.update(services, {})
    publisher.rebuild()
    connect(cache, node_id, metadata)  # must not raise into the node's stream
    assert cache.node_snapshot(node_id) is None
    assert expected in (publisher.node_problem(node_id) or "")
    assert publisher.rebuild().ok  # and it does not fail later rebuilds either


def test_a_node_whose_build_fails_on_connect_does_not_break_its_stream(
    publisher: Publisher,
    cache: SnapshotCache,
    builder: FlakyBuilder,
    services: tuple[MeshService, ...],
) -> None:
    publisher.update(services, {})
    publisher.rebuild()
    builder.failing.add(ORDERS)
    connect(cache, ORDERS)
    assert cache.node_snapshot(ORDERS) is None
    assert "injected by the test" in (publisher.node_problem(ORDERS) or "")


# --- versions ----------------------------------------------------------------------------------


def test_the_inputs_version_is_a_content_hash(services: tuple[MeshService, ...]) -> None:
    one = MeshInputs.of(services, payments_at(41001, 41002))
    same = MeshInputs.of(
        reversed(services), {"payments": tuple(reversed(payments_at(41001, 41002)["payments"]))}
    )
    assert one.version == same.version
    assert one.version != MeshInputs.of(services, payments_at(41001)).version
    unready = {"payments": (Endpoint("127.0.0.1", 41001, "v1", ready=False),)}
    assert (
        MeshInputs.of(services, unready).version
        != MeshInputs.of(services, payments_at(41001)).version
    )


def _walk(value: object, path: str) -> Iterator[str]:
    """Paths of every dict, set or other mapping inside a model value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _walk(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, Mapping | set | frozenset):
        yield path
    elif isinstance(value, tuple | list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")


def test_the_model_repr_is_canonical() -> None:
    """MeshInputs.version hashes repr(model): only ordered, immutable values may be in it, or
    equal inputs could get different versions in different processes."""
    from grpcmesh_control.local.sources.files import parse_resource_files, read_resource_files
    from grpcmesh_control.mesh.catalogs import load_catalog

    examples = Path(__file__).resolve().parents[3] / "manifests" / "examples"
    services = parse_resource_files(read_resource_files(examples), catalog=load_catalog()).services
    assert services
    assert [p for s in services for p in _walk(s, s.name)] == []
