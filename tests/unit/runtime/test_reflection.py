"""The reflection pool the ingress serves: exactly the exposed services, their files without
other services, their imports (well-known ones from the runtime), and a clear refusal when an
import is nowhere."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from grpcmesh_control.host.reflection import exposed_pool
from grpcmesh_control.mesh.catalogs import ProtoSet, reference_protos

CATALOG = "grpcmesh.shop.v1.CatalogService"
ORDERS = "grpcmesh.shop.v1.OrderService"


def test_only_the_exposed_services_and_what_they_import() -> None:
    pool, names = exposed_pool(reference_protos(), [ORDERS, CATALOG, "not.in.Protos"])
    assert names == (CATALOG, ORDERS)
    assert pool.FindServiceByName(ORDERS).FindMethodByName("WatchOrder") is not None
    # common.proto (Money) is served for its messages; timestamp.proto comes from the runtime
    assert pool.FindMessageTypeByName("grpcmesh.shop.v1.Money") is not None
    assert pool.FindFileByName("google/protobuf/timestamp.proto") is not None
    for hidden in ("grpcmesh.shop.v1.InventoryService", "grpcmesh.shop.v1.PaymentService"):
        with pytest.raises(KeyError):
            pool.FindServiceByName(hidden)


def test_a_file_is_served_without_its_unexposed_services() -> None:
    proto = descriptor_pb2.FileDescriptorProto(name="two.proto", package="p", syntax="proto3")
    proto.message_type.add(name="M")
    for name in ("Public", "Private"):
        proto.service.add(name=name).method.add(name="Do", input_type=".p.M", output_type=".p.M")
    pool, names = exposed_pool(ProtoSet((proto,)), ["p.Public"])
    assert names == ("p.Public",)
    assert [s.name for s in pool.FindFileByName("two.proto").services_by_name.values()] == [
        "Public"
    ]


def test_an_import_in_no_set_is_named() -> None:
    proto = descriptor_pb2.FileDescriptorProto(
        name="a.proto", package="p", dependency=["vendor/missing.proto"]
    )
    proto.service.add(name="S")
    with pytest.raises(ValueError, match=r"vendor/missing\.proto is imported but in no"):
        exposed_pool(ProtoSet((proto,)), ["p.S"])
