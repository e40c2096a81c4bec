"""Descriptor-set ConfigMaps -> the operator's method catalog (no cluster needed)."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import descriptor_pb2

from grpcmesh_control.cluster.controller.descriptors import catalog_of_config_maps
from grpcmesh_control.mesh.catalogs import catalog_from_descriptor_set, load_catalog
from grpcmesh_control.mesh.model.catalog import Idempotency


def _file_set(package: str, service: str, method: str, level: int) -> bytes:
    file = descriptor_pb2.FileDescriptorProto(name=f"{service}.proto", package=package)
    svc = file.service.add(name=service)
    rpc = svc.method.add(name=method, input_type=".x.In", output_type=".x.Out")
    rpc.options.idempotency_level = level  # type: ignore[assignment]
    return descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()


def _config_map(namespace: str, name: str, **sets: bytes) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "binaryData": {key: base64.b64encode(data).decode() for key, data in sets.items()},
    }


def test_a_users_protos_give_their_idempotency() -> None:
    data = _file_set(
        "acme.v1", "Reviews", "GetReview", descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    )
    catalog, problems = catalog_of_config_maps([_config_map("team-a", "reviews", api=data)])
    assert problems == ()
    info = catalog.lookup("acme.v1.Reviews", "GetReview")
    assert info is not None and info.idempotency is Idempotency.NO_SIDE_EFFECTS


def test_a_bad_value_is_reported_and_the_rest_still_counts() -> None:
    good = _file_set("acme.v1", "Reviews", "GetReview", descriptor_pb2.MethodOptions.IDEMPOTENT)
    bad = _config_map("team-b", "broken")
    bad["binaryData"]["api.binpb"] = base64.b64encode(b"\xff\xff not protobuf").decode()
    catalog, problems = catalog_of_config_maps([bad, _config_map("team-a", "reviews", api=good)])
    assert catalog.service_names == ("acme.v1.Reviews",)
    assert len(problems) == 1 and problems[0].startswith(
        "ConfigMap team-b/broken binaryData.api.binpb"
    )


def test_the_later_config_map_wins_for_a_service_defined_twice() -> None:
    old = _file_set(
        "acme.v1", "Reviews", "GetReview", descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN
    )
    new = _file_set("acme.v1", "Reviews", "GetReview", descriptor_pb2.MethodOptions.IDEMPOTENT)
    catalog, _ = catalog_of_config_maps(
        [_config_map("ns", "b-new", api=new), _config_map("ns", "a-old", api=old)]
    )
    info = catalog.lookup("acme.v1.Reviews", "GetReview")
    assert info is not None and info.idempotency is Idempotency.IDEMPOTENT


def test_a_descriptor_set_gives_what_the_generated_code_gives() -> None:
    from grpcmesh.shop.v1 import catalog_pb2, common_pb2, inventory_pb2, orders_pb2, payments_pb2

    file_set = descriptor_pb2.FileDescriptorSet()
    for module in (catalog_pb2, common_pb2, inventory_pb2, orders_pb2, payments_pb2):
        module.DESCRIPTOR.CopyToProto(file_set.file.add())
    assert catalog_from_descriptor_set(file_set.SerializeToString()) == load_catalog()


def test_the_files_are_kept_for_reflection_at_the_ingress() -> None:
    from grpcmesh_control.cluster.controller.descriptors import protos_of_config_maps
    from grpcmesh_control.host.reflection import exposed_pool

    file = descriptor_pb2.FileDescriptorProto(name="reviews.proto", package="acme.v1")
    file.message_type.add(name="Review")
    file.service.add(name="Reviews").method.add(
        name="GetReview", input_type=".acme.v1.Review", output_type=".acme.v1.Review"
    )
    data = descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()
    protos, problems = protos_of_config_maps([_config_map("team-a", "reviews", api=data)])
    assert problems == () and [f.package for f in protos.files] == ["acme.v1"]
    pool, names = exposed_pool(protos, ["acme.v1.Reviews"])
    assert names == ("acme.v1.Reviews",)
    assert pool.FindServiceByName("acme.v1.Reviews").FindMethodByName("GetReview") is not None
