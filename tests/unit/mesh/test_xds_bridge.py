"""A translated snapshot enters the xDS cache with the versions translate computed, so the
version in `status` is the one a user can reproduce from the resources."""

from __future__ import annotations

from grpcmesh_control.mesh.translate import Registry, build_snapshot
from grpcmesh_control.mesh.translate.naming import NodeId, ProxyNode
from grpcmesh_control.mesh.xds import PUSH_ORDER, SnapshotCache


def test_the_packed_snapshot_carries_translate_versions_and_per_resource_ones(
    registry: Registry,
) -> None:
    node = ProxyNode.from_node(str(NodeId.sidecar("orders", "0")), {})
    snapshot = build_snapshot(registry, node)
    packed = snapshot.packed
    assert packed.version == snapshot.version
    for type_url in PUSH_ORDER:
        typed = packed.of(type_url)
        assert typed.version == snapshot.versions[type_url]
        assert set(typed.resources) == set(snapshot.resources(type_url))
        assert set(typed.resource_versions) == set(typed.resources)

    cache = SnapshotCache()
    assert cache.set_snapshot(str(node.id), packed) is True
    assert cache.set_snapshot(str(node.id), build_snapshot(registry, node).packed) is False
