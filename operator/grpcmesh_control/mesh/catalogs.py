"""Edge: build a ``MethodCatalog`` from protobuf descriptors.

Kept out of ``model`` so the core sees plain data; this is the one place that reads
``MethodOptions.idempotency_level``. Everything goes through ``FileDescriptorProto``: the
generated ``*_pb2`` modules (local mode, the reference domain) are converted to it, and a
serialized ``FileDescriptorSet`` (``buf build -o x.binpb``, ``protoc --descriptor_set_out``)
already is it. A cluster delivers the latter in ConfigMaps (``cluster.controller.descriptors``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError

from grpcmesh_control.mesh.model.catalog import Idempotency, MethodCatalog, MethodInfo, ServiceInfo

__all__ = [
    "SHOP_V1_MODULES",
    "catalog_from_descriptor_set",
    "catalog_from_descriptors",
    "catalog_from_file_protos",
    "load_catalog",
]

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


def catalog_from_file_protos(
    files: Iterable[descriptor_pb2.FileDescriptorProto],
) -> MethodCatalog:
    """Every service of every file; a later file wins for a service named twice."""
    by_name: dict[str, ServiceInfo] = {}
    for file in files:
        for service in file.service:
            name = f"{file.package}.{service.name}" if file.package else service.name
            by_name[name] = ServiceInfo(name, tuple(_method(m) for m in service.method))
    return MethodCatalog(tuple(by_name.values()))


def catalog_from_descriptors(files: Iterable[FileDescriptor]) -> MethodCatalog:
    """From loaded descriptors, e.g. ``[catalog_pb2.DESCRIPTOR, orders_pb2.DESCRIPTOR]``."""
    protos = []
    for file in files:
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        protos.append(proto)
    return catalog_from_file_protos(protos)


def catalog_from_descriptor_set(data: bytes) -> MethodCatalog:
    """From a serialized ``FileDescriptorSet``; ``ValueError`` when ``data`` is not one."""
    try:
        file_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a serialized FileDescriptorSet: {exc}") from None
    return catalog_from_file_protos(file_set.file)


def load_catalog(module_names: Iterable[str] = SHOP_V1_MODULES) -> MethodCatalog:
    """Import the named ``*_pb2`` modules and build their catalog."""
    return catalog_from_descriptors(
        importlib.import_module(name).DESCRIPTOR for name in module_names
    )


def _method(method: descriptor_pb2.MethodDescriptorProto) -> MethodInfo:
    return MethodInfo(
        name=method.name,
        idempotency=_LEVELS.get(method.options.idempotency_level, Idempotency.UNKNOWN),
        client_streaming=method.client_streaming,
        server_streaming=method.server_streaming,
    )
