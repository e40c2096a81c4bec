"""Edge: build a ``MethodCatalog`` from protobuf descriptors (the generated ``*_pb2`` modules).

Kept out of ``model`` so the core sees plain data; this is the one place that reads
``MethodOptions.idempotency_level`` from descriptors.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor

from grpcmesh_control.model.catalog import Idempotency, MethodCatalog, MethodInfo, ServiceInfo

__all__ = ["SHOP_V1_MODULES", "catalog_from_descriptors", "load_catalog"]

# The reference domain's generated modules (``make gen``); common_pb2 defines no services.
SHOP_V1_MODULES = (
    "grpcmesh.shop.v1.catalog_pb2",
    "grpcmesh.shop.v1.inventory_pb2",
    "grpcmesh.shop.v1.orders_pb2",
    "grpcmesh.shop.v1.payments_pb2",
)

_LEVELS = {
    descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN: Idempotency.UNKNOWN,
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS: Idempotency.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT: Idempotency.IDEMPOTENT,
}


def catalog_from_descriptors(files: Iterable[FileDescriptor]) -> MethodCatalog:
    """Every service of every file, e.g. ``[catalog_pb2.DESCRIPTOR, orders_pb2.DESCRIPTOR]``."""
    return MethodCatalog(
        tuple(
            ServiceInfo(service.full_name, tuple(_method(m) for m in service.methods))
            for file in files
            for service in file.services_by_name.values()
        )
    )


def load_catalog(module_names: Iterable[str] = SHOP_V1_MODULES) -> MethodCatalog:
    """Import the named ``*_pb2`` modules and build their catalog."""
    return catalog_from_descriptors(
        importlib.import_module(name).DESCRIPTOR for name in module_names
    )


def _method(method: MethodDescriptor) -> MethodInfo:
    level = method.GetOptions().idempotency_level
    return MethodInfo(
        name=method.name,
        idempotency=_LEVELS.get(level, Idempotency.UNKNOWN),
        client_streaming=method.client_streaming,
        server_streaming=method.server_streaming,
    )
