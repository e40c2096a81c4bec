"""Per-node SDS secrets layered onto shared group snapshots (no sockets): replicas of one
group share the group's resources but each gets only its own secrets, a secret change wakes
and pushes to that node alone, and the group snapshot never holds a secret."""

from __future__ import annotations

import asyncio

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from grpcmesh_control.host.metrics import XdsType
from grpcmesh_control.mesh.translate.versioned import SECRET, TypeResources, pack_resources
from grpcmesh_control.mesh.xds import CLUSTER, SnapshotCache, version_snapshot
from grpcmesh_control.mesh.xds.streams import DeltaStream, SotwStream
from tests.unit.ads.test_streams import snapshot

GROUP = "orders"
REPLICAS = ("sidecar~orders~0", "sidecar~orders~1")


def group_cache() -> SnapshotCache:
    """Both replicas in one group with one cluster."""
    cache = SnapshotCache(group_of=lambda node_id, metadata: GROUP)
    cache.set_snapshot(GROUP, version_snapshot(snapshot({"a": 1})))
    return cache


def secrets(key: str) -> TypeResources:
    certificate = secret_pb2.Secret(
        name="workload",
        tls_certificate={
            "certificate_chain": {"inline_bytes": f"cert {key}".encode()},
            "private_key": {"inline_bytes": f"key {key}".encode()},
        },
    )
    return pack_resources(SECRET, [certificate])


def keys_in(
    response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse,
) -> list[bytes]:
    resources = (
        [r.resource for r in response.resources]
        if isinstance(response, discovery_pb2.DeltaDiscoveryResponse)
        else list(response.resources)
    )
    out = []
    for packed in resources:
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        out.append(secret.tls_certificate.private_key.inline_bytes)
    return out


def sotw(node: str, type_url: str, names: tuple[str, ...] = ()) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(
        node=base_pb2.Node(id=node), type_url=type_url, resource_names=list(names)
    )


def test_each_replica_sees_the_shared_group_and_only_its_own_secrets() -> None:
    cache = group_cache()
    for replica in REPLICAS:
        cache.connected(replica, {})
        cache.set_node_secrets(replica, secrets(replica))
    group = cache.snapshot(GROUP)
    assert group is not None and SECRET not in group.by_type  # never in the shared part
    views = [cache.node_snapshot(r) for r in REPLICAS]
    for replica, view in zip(REPLICAS, views, strict=True):
        assert view is not None
        assert view.of(CLUSTER) is group.of(CLUSTER)
        streams = SotwStream(cache)
        [response] = streams.on_request(sotw(replica, SECRET, ("workload",)))
        assert keys_in(response) == [f"key {replica}".encode()]
    assert views[0] is not None and views[1] is not None
    assert views[0].version != views[1].version
    # The same view object while nothing changed (not rebuilt per request).
    assert cache.node_snapshot(REPLICAS[0]) is views[0]


def test_a_new_secret_is_pushed_to_its_node_only() -> None:
    cache = group_cache()
    streams = {}
    for replica in REPLICAS:
        cache.connected(replica, {})
        cache.set_node_secrets(replica, secrets(f"{replica} v1"))
        streams[replica] = SotwStream(cache)
        streams[replica].on_request(sotw(replica, CLUSTER))
        streams[replica].on_request(sotw(replica, SECRET, ("workload",)))
    generations = {r: cache.node_generation(r) for r in REPLICAS}
    assert cache.set_node_secrets(REPLICAS[0], secrets(f"{REPLICAS[0]} v2")) is True
    assert cache.set_node_secrets(REPLICAS[1], secrets(f"{REPLICAS[1]} v1")) is False
    assert cache.node_generation(REPLICAS[0]) == generations[REPLICAS[0]] + 1
    assert cache.node_generation(REPLICAS[1]) == generations[REPLICAS[1]]
    [pushed] = streams[REPLICAS[0]].on_snapshot()
    assert pushed.type_url == SECRET and keys_in(pushed) == [f"key {REPLICAS[0]} v2".encode()]
    assert streams[REPLICAS[1]].on_snapshot() == []


def test_delta_pushes_a_renewed_secret() -> None:
    cache = group_cache()
    node = REPLICAS[0]
    cache.connected(node, {})
    cache.set_node_secrets(node, secrets("v1"))
    stream = DeltaStream(cache)
    request = discovery_pb2.DeltaDiscoveryRequest(
        node=base_pb2.Node(id=node), type_url=SECRET, resource_names_subscribe=["workload"]
    )
    [first] = stream.on_request(request)
    assert keys_in(first) == [b"key v1"]
    cache.set_node_secrets(node, secrets("v2"))
    [renewed] = stream.on_snapshot()
    assert keys_in(renewed) == [b"key v2"]


async def test_waiting_streams_wake_for_their_secrets_and_their_group() -> None:
    cache = group_cache()
    node = REPLICAS[0]
    cache.connected(node, {})
    seen = cache.node_generation(node)
    waiter = asyncio.ensure_future(cache.wait_for_node_change(node, seen))
    await asyncio.sleep(0)
    cache.set_node_secrets(REPLICAS[1], secrets("other"))  # another node's: not ours
    await asyncio.sleep(0)
    assert not waiter.done()
    cache.set_node_secrets(node, secrets("mine"))
    seen = await asyncio.wait_for(waiter, 1)
    waiter = asyncio.ensure_future(cache.wait_for_node_change(node, seen))
    await asyncio.sleep(0)
    assert not waiter.done()
    cache.set_snapshot(GROUP, version_snapshot(snapshot({"a": 2})))
    assert await asyncio.wait_for(waiter, 1) == seen + 1


def test_forgotten_secrets_leave_the_view() -> None:
    cache = group_cache()
    node = REPLICAS[0]
    cache.connected(node, {})
    cache.set_node_secrets(node, secrets("v1"))
    cache.forget_node_secrets(node)
    view = cache.node_snapshot(node)
    assert view is cache.snapshot(GROUP) and cache.node_secrets(node) is None


def test_secret_pushes_have_their_own_metric_label() -> None:
    assert XdsType.of(SECRET) is XdsType.SECRET
    assert XdsType.SECRET.value == "secret"
