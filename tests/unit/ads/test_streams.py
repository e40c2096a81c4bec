"""The xDS protocol rules, one test per rule, on the stream state machines (no sockets)."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from grpcmesh_control.mesh.xds import (
    CLUSTER,
    ENDPOINT,
    SnapshotCache,
    version_snapshot,
)
from grpcmesh_control.mesh.xds.streams import DeltaStream, ProtocolError, SotwStream

NODE = base_pb2.Node(id="sidecar~orders~0", cluster="orders")


def snapshot(clusters: dict[str, int]) -> dict[str, dict[str, Message]]:
    """Clusters named by key; each one's load assignment has ``value`` endpoints."""
    resources: dict[str, dict[str, Message]] = {CLUSTER: {}, ENDPOINT: {}}
    for name, endpoints in clusters.items():
        resources[CLUSTER][name] = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
        resources[ENDPOINT][name] = endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[endpoint_components_pb2.LbEndpoint() for _ in range(endpoints)]
                )
            ],
        )
    return resources


def node_cache() -> SnapshotCache:
    """One group per node: these tests address snapshots by node id."""
    return SnapshotCache(group_of=lambda node_id, metadata: node_id)


def cache_with(clusters: dict[str, int]) -> SnapshotCache:
    cache = node_cache()
    cache.set_snapshot(NODE.id, version_snapshot(snapshot(clusters)))
    return cache


def request(
    type_url: str,
    names: tuple[str, ...] = (),
    *,
    ack: discovery_pb2.DiscoveryResponse | None = None,
    nack: str | None = None,
) -> discovery_pb2.DiscoveryRequest:
    message = discovery_pb2.DiscoveryRequest(
        node=NODE, type_url=type_url, resource_names=list(names)
    )
    if ack is not None:
        message.response_nonce = ack.nonce
        if nack is None:
            message.version_info = ack.version_info
        else:
            message.error_detail.CopyFrom(status_pb2.Status(code=3, message=nack))
    return message


def names_in(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for packed in response.resources:
        if packed.Is(cluster_pb2.Cluster.DESCRIPTOR):
            cluster = cluster_pb2.Cluster()
            packed.Unpack(cluster)
            out.append(cluster.name)
        else:
            assignment = endpoint_pb2.ClusterLoadAssignment()
            packed.Unpack(assignment)
            out.append(assignment.cluster_name)
    return out


def test_first_request_must_name_the_node() -> None:
    stream = SotwStream(cache_with({"a": 1}))
    with pytest.raises(ProtocolError, match=r"node\.id"):
        stream.on_request(discovery_pb2.DiscoveryRequest(type_url=CLUSTER))


def test_wildcard_cds_then_eds_by_name() -> None:
    stream = SotwStream(cache_with({"a": 1, "b": 2}))
    [cds] = stream.on_request(request(CLUSTER))
    assert names_in(cds) == ["a", "b"]
    [eds] = stream.on_request(request(ENDPOINT, ("b",)))
    assert names_in(eds) == ["b"]


def test_ack_is_recorded_and_nothing_is_resent() -> None:
    cache = cache_with({"a": 1})
    stream = SotwStream(cache)
    [cds] = stream.on_request(request(CLUSTER))
    assert stream.on_request(request(CLUSTER, ack=cds)) == []
    node = cache.node(NODE.id)
    assert node.acked[CLUSTER] == cds.version_info
    assert node.connected and node.nack is None


def test_snapshot_change_pushes_cds_before_eds() -> None:
    cache = cache_with({"a": 1})
    stream = SotwStream(cache)
    [eds] = stream.on_request(request(ENDPOINT, ("a", "b")))
    [cds] = stream.on_request(request(CLUSTER))
    stream.on_request(request(ENDPOINT, ("a", "b"), ack=eds))
    stream.on_request(request(CLUSTER, ack=cds))
    cache.set_snapshot(NODE.id, version_snapshot(snapshot({"a": 1, "b": 1})))
    pushed = stream.on_snapshot()
    assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINT]
    assert names_in(pushed[1]) == ["a", "b"]


def test_only_changed_types_are_pushed() -> None:
    cache = cache_with({"a": 1})
    stream = SotwStream(cache)
    [cds] = stream.on_request(request(CLUSTER))
    [_eds] = stream.on_request(request(ENDPOINT, ("a",)))
    cache.set_snapshot(NODE.id, version_snapshot(snapshot({"a": 3})))  # endpoints only
    [pushed] = stream.on_snapshot()
    assert pushed.type_url == ENDPOINT
    assert cds.version_info  # untouched CDS version was not resent


def test_nack_is_reported_and_not_retried_until_a_new_version() -> None:
    cache = cache_with({"a": 1})
    stream = SotwStream(cache)
    [cds] = stream.on_request(request(CLUSTER))
    assert stream.on_request(request(CLUSTER, ack=cds, nack="bad cluster a")) == []
    node = cache.node(NODE.id)
    assert node.nack is not None
    assert (node.nack.type_url, node.nack.version, node.nack.message) == (
        CLUSTER,
        cds.version_info,
        "bad cluster a",
    )
    # The same (rejected) version is never pushed again...
    cache.set_snapshot("other-group", version_snapshot(snapshot({"z": 1})))
    assert stream.on_snapshot() == []
    # ...a new one is, and its ACK clears the NACK.
    cache.set_snapshot(NODE.id, version_snapshot(snapshot({"a": 1, "c": 1})))
    [fixed] = stream.on_snapshot()
    stream.on_request(request(CLUSTER, ack=fixed))
    assert node.nack is None and node.acked[CLUSTER] == fixed.version_info


def test_stale_nonce_is_ignored() -> None:
    cache = cache_with({"a": 1})
    stream = SotwStream(cache)
    [first] = stream.on_request(request(CLUSTER))
    cache.set_snapshot(NODE.id, version_snapshot(snapshot({"b": 1})))
    [second] = stream.on_snapshot()
    assert stream.on_request(request(CLUSTER, ack=first, nack="late complaint")) == []
    assert cache.node(NODE.id).nack is None
    stream.on_request(request(CLUSTER, ack=second))
    assert cache.node(NODE.id).acked[CLUSTER] == second.version_info


def test_acked_snapshot_needs_every_watched_type() -> None:
    cache = cache_with({"a": 1})
    stream = SotwStream(cache)
    [cds] = stream.on_request(request(CLUSTER))
    [eds] = stream.on_request(request(ENDPOINT, ("a",)))
    stream.on_request(request(CLUSTER, ack=cds))
    node = cache.node(NODE.id)
    assert node.acked_snapshot is None
    stream.on_request(request(ENDPOINT, ("a",), ack=eds))
    current = cache.snapshot(NODE.id)
    assert current is not None and node.acked_snapshot == current.version


def test_disconnect_is_recorded() -> None:
    cache = cache_with({"a": 1})
    stream = SotwStream(cache)
    stream.on_request(request(CLUSTER))
    stream.close()
    assert not cache.node(NODE.id).connected


def test_versions_are_content_hashes() -> None:
    one = version_snapshot(snapshot({"a": 1, "b": 2}))
    two = version_snapshot(snapshot({"b": 2, "a": 1}))
    three = version_snapshot(snapshot({"a": 1, "b": 3}))
    assert one.version == two.version
    assert one.version != three.version
    assert one.of(CLUSTER).version == three.of(CLUSTER).version
    assert one.of(ENDPOINT).version != three.of(ENDPOINT).version


def test_unchanged_snapshot_is_not_republished() -> None:
    cache = cache_with({"a": 1})
    assert cache.set_snapshot(NODE.id, version_snapshot(snapshot({"a": 1}))) is False
    assert cache.generation(NODE.id) == 1


async def test_wait_for_change_wakes_on_publish() -> None:
    cache = cache_with({"a": 1})
    waiter = asyncio.ensure_future(cache.wait_for_change(NODE.id, 1))
    await asyncio.sleep(0)
    assert not waiter.done()
    cache.set_snapshot(NODE.id, version_snapshot(snapshot({"a": 2})))
    assert await asyncio.wait_for(waiter, 1) == 2


# --- delta ------------------------------------------------------------------------------------


def delta(
    type_url: str,
    subscribe: tuple[str, ...] = (),
    *,
    ack: discovery_pb2.DeltaDiscoveryResponse | None = None,
    nack: str | None = None,
    initial: dict[str, str] | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    message = discovery_pb2.DeltaDiscoveryRequest(
        node=NODE,
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        initial_resource_versions=initial or {},
    )
    if ack is not None:
        message.response_nonce = ack.nonce
        if nack is not None:
            message.error_detail.CopyFrom(status_pb2.Status(code=3, message=nack))
    return message


def test_delta_sends_only_what_changed_and_what_was_removed() -> None:
    cache = cache_with({"a": 1, "b": 1})
    stream = DeltaStream(cache)
    [first] = stream.on_request(delta(CLUSTER))
    assert [r.name for r in first.resources] == ["a", "b"]
    assert stream.on_request(delta(CLUSTER, ack=first)) == []
    assert cache.node(NODE.id).acked[CLUSTER] == first.system_version_info

    cache.set_snapshot(NODE.id, version_snapshot(snapshot({"b": 1, "c": 1})))
    [update] = stream.on_snapshot()
    assert [r.name for r in update.resources] == ["c"]
    assert list(update.removed_resources) == ["a"]


def test_delta_reconnect_with_initial_versions_sends_nothing_new() -> None:
    cache = cache_with({"a": 1})
    current = cache.snapshot(NODE.id)
    assert current is not None
    held = dict(current.of(CLUSTER).resource_versions)
    stream = DeltaStream(cache)
    [response] = stream.on_request(delta(CLUSTER, initial=held))
    assert list(response.resources) == [] and list(response.removed_resources) == []


def test_delta_eds_by_subscription_and_nack_without_loop() -> None:
    cache = cache_with({"a": 1, "b": 1})
    stream = DeltaStream(cache)
    [eds] = stream.on_request(delta(ENDPOINT, ("a",)))
    assert [r.name for r in eds.resources] == ["a"]
    assert stream.on_request(delta(ENDPOINT, ack=eds, nack="no")) == []
    assert cache.node(NODE.id).nack is not None
    assert stream.on_snapshot() == []
    cache.set_snapshot(NODE.id, version_snapshot(snapshot({"a": 2, "b": 1})))
    [fixed] = stream.on_snapshot()
    assert [r.name for r in fixed.resources] == ["a"]


def _with_outlier_detection(resources: dict[str, dict[str, Message]]) -> None:
    for cluster in resources[CLUSTER].values():
        assert isinstance(cluster, cluster_pb2.Cluster)
        cluster.outlier_detection.consecutive_5xx.value = 3


def test_a_changed_cluster_gets_its_unchanged_endpoints_again() -> None:
    """Envoy warms a re-sent cluster until it sees its load assignment again."""
    cache = cache_with({"a": 1})
    stream = SotwStream(cache)
    [cds] = stream.on_request(request(CLUSTER))
    [eds] = stream.on_request(request(ENDPOINT, ("a",)))
    stream.on_request(request(CLUSTER, ack=cds))
    stream.on_request(request(ENDPOINT, ("a",), ack=eds))
    changed = snapshot({"a": 1})
    _with_outlier_detection(changed)
    cache.set_snapshot(NODE.id, version_snapshot(changed))
    pushed = stream.on_snapshot()
    assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINT]
    assert pushed[1].version_info == eds.version_info  # same endpoints, sent again
    assert names_in(pushed[1]) == ["a"]


def test_delta_a_changed_cluster_gets_its_endpoints_again() -> None:
    cache = cache_with({"a": 1, "b": 1})
    stream = DeltaStream(cache)
    [cds] = stream.on_request(delta(CLUSTER))
    [eds] = stream.on_request(delta(ENDPOINT, ("a", "b")))
    stream.on_request(delta(CLUSTER, ack=cds))
    stream.on_request(delta(ENDPOINT, ack=eds))
    changed = snapshot({"a": 1, "b": 1})
    cluster = changed[CLUSTER]["a"]
    assert isinstance(cluster, cluster_pb2.Cluster)
    cluster.outlier_detection.consecutive_5xx.value = 3
    cache.set_snapshot(NODE.id, version_snapshot(changed))
    cds_update, eds_update = stream.on_snapshot()
    assert [r.name for r in cds_update.resources] == ["a"]
    assert [r.name for r in eds_update.resources] == ["a"]
