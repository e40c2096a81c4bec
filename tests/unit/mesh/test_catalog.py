"""MethodCatalog from the generated shop descriptors: idempotency and streaming per method."""

from __future__ import annotations

from grpcmesh.shop.v1 import catalog_pb2, orders_pb2
from grpcmesh_control.mesh.catalogs import catalog_from_descriptors
from grpcmesh_control.mesh.model import Idempotency, MethodCatalog, MethodInfo

ORDERS = "grpcmesh.shop.v1.OrderService"
INVENTORY = "grpcmesh.shop.v1.InventoryService"


def test_reads_idempotency_levels_from_the_protos(catalog: MethodCatalog) -> None:
    levels = {m.name: m.idempotency for m in catalog.methods(INVENTORY)}
    assert levels == {
        "AdjustStock": Idempotency.UNKNOWN,
        "CommitStock": Idempotency.IDEMPOTENT,
        "GetStock": Idempotency.NO_SIDE_EFFECTS,
        "ReleaseStock": Idempotency.IDEMPOTENT,
        "ReserveStock": Idempotency.IDEMPOTENT,
    }
    assert not Idempotency.UNKNOWN.safe_to_retry
    assert Idempotency.IDEMPOTENT.safe_to_retry and Idempotency.NO_SIDE_EFFECTS.safe_to_retry


def test_reads_streaming_flags(catalog: MethodCatalog) -> None:
    watch = catalog.lookup(ORDERS, "WatchOrder")
    assert watch == MethodInfo("WatchOrder", Idempotency.NO_SIDE_EFFECTS, False, True)
    assert watch.streaming
    place = catalog.lookup(ORDERS, "PlaceOrder")
    assert place is not None and not place.streaming


def test_only_files_given_are_known() -> None:
    partial = catalog_from_descriptors([catalog_pb2.DESCRIPTOR])
    assert partial.service_names == ("grpcmesh.shop.v1.CatalogService",)
    assert not partial.knows(ORDERS)
    assert partial.methods(ORDERS) == ()
    assert partial.lookup(ORDERS, "PlaceOrder") is None


def test_merged_is_a_new_catalog() -> None:
    first = catalog_from_descriptors([catalog_pb2.DESCRIPTOR])
    both = first.merged(catalog_from_descriptors([orders_pb2.DESCRIPTOR]))
    assert both.knows(ORDERS) and both.knows("grpcmesh.shop.v1.CatalogService")
    assert not first.knows(ORDERS)


def test_equal_content_is_equal_regardless_of_order() -> None:
    a = MethodCatalog.of({"x.A": [MethodInfo("B"), MethodInfo("A")], "x.B": []})
    b = MethodCatalog.of({"x.B": [], "x.A": [MethodInfo("A"), MethodInfo("B")]})
    assert a == b and hash(a) == hash(b)
