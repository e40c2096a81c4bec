"""Edge: build a ``MethodCatalog`` from protobuf descriptors.

Kept out of ``model`` so the core sees plain data; this is the one place that reads
``MethodOptions.idempotency_level``. Everything goes through ``FileDescriptorProto``: a
serialized ``FileDescriptorSet`` (``buf build -o x.binpb``, ``protoc --descriptor_set_out``)
already is it, and loaded descriptors (``*_pb2.DESCRIPTOR``) are converted to it.

No service is known by name here. The mesh knows the protos it is given: the reference
domain's set (``make chart-assets`` builds it; the package ships a copy, ``REFERENCE_SET``),
plus the sets a user adds (local mode: ``*.binpb`` beside the resources, ``up --descriptors``;
a cluster: ConfigMaps, ``cluster.controller.descriptors``). ``ProtoSet`` keeps the files
themselves, not just the catalog, so the control plane can answer server reflection from them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, cached_property
from importlib.resources import files

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError

from grpcmesh_control.mesh.model.catalog import Idempotency, MethodCatalog, MethodInfo, ServiceInfo

__all__ = [
    "REFERENCE_SET",
    "ProtoSet",
    "catalog_from_descriptor_set",
    "catalog_from_descriptors",
    "catalog_from_file_protos",
    "load_catalog",
    "reference_protos",
]

REFERENCE_SET = "grpcmesh.shop.v1.binpb"
"""Package data (``mesh/``): a copy of the chart's reference descriptor set (``make copies``)."""

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
    return ProtoSet.parse(data).catalog


@dataclass(frozen=True)
class ProtoSet:
    """Proto files (``FileDescriptorProto``) by file name, in the order they were given."""

    files: tuple[descriptor_pb2.FileDescriptorProto, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> ProtoSet:
        """A serialized ``FileDescriptorSet``; ``ValueError`` when ``data`` is not one."""
        try:
            file_set = descriptor_pb2.FileDescriptorSet.FromString(data)
        except DecodeError as exc:
            raise ValueError(f"not a serialized FileDescriptorSet: {exc}") from None
        if data and not file_set.file:
            raise ValueError("not a serialized FileDescriptorSet: it holds no file")
        return cls(tuple(file_set.file))

    def merged(self, other: ProtoSet) -> ProtoSet:
        """Both; ``other``'s copy of a file (by name) replaces this one's."""
        replaced = {f.name for f in other.files}
        return ProtoSet(tuple(f for f in self.files if f.name not in replaced) + other.files)

    @cached_property
    def catalog(self) -> MethodCatalog:
        return catalog_from_file_protos(self.files)

    def inconsistency(self) -> tuple[str, str] | None:
        """The first proto file that does not build into one descriptor pool with the others
        (a symbol another file defines too, an import no file holds), and why; None when every
        file builds. A ``google/protobuf/`` import comes from the protobuf runtime if absent."""
        by_name = {f.name: f for f in self.files}
        pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()

        def add(file: descriptor_pb2.FileDescriptorProto) -> tuple[str, str] | None:
            added.add(file.name)
            for dependency in file.dependency:
                if dependency in added:
                    continue
                imported = by_name.get(dependency) or _well_known(dependency)
                if imported is None:
                    return file.name, (
                        f"imports {dependency}, which no descriptor set holds "
                        "(build the set with --include_imports)"
                    )
                failed = add(imported)
                if failed is not None:
                    return failed
            try:
                pool.Add(file)
            except TypeError as exc:  # what the pool says, without its generic preamble
                return file.name, str(exc).removeprefix(
                    "Couldn't build proto file into descriptor pool: "
                )
            return None

        for file in self.files:
            if file.name not in added:
                failed = add(file)
                if failed is not None:
                    return failed
        return None

    def serialized(self) -> bytes:
        return descriptor_pb2.FileDescriptorSet(file=self.files).SerializeToString(
            deterministic=True
        )


@cache
def reference_protos() -> ProtoSet:
    """The reference domain's protos (the descriptor set ``make chart-assets`` builds)."""
    return ProtoSet.parse((files("grpcmesh_control.mesh") / REFERENCE_SET).read_bytes())


def load_catalog() -> MethodCatalog:
    """The reference domain's catalog: what a mesh knows before a user adds protos."""
    return reference_protos().catalog


def _well_known(name: str) -> descriptor_pb2.FileDescriptorProto | None:
    """``google/protobuf/<x>.proto`` as the protobuf runtime has it, else None."""
    if not name.startswith("google/protobuf/") or not name.endswith(".proto"):
        return None
    module = name.removesuffix(".proto").replace("/", ".") + "_pb2"
    try:
        importlib.import_module(module)  # registers the file in the default pool
        found = descriptor_pool.Default().FindFileByName(name)
    except (ImportError, KeyError):
        return None
    proto = descriptor_pb2.FileDescriptorProto()
    found.CopyToProto(proto)
    return proto


def _method(method: descriptor_pb2.MethodDescriptorProto) -> MethodInfo:
    return MethodInfo(
        name=method.name,
        idempotency=_LEVELS.get(method.options.idempotency_level, Idempotency.UNKNOWN),
        client_streaming=method.client_streaming,
        server_streaming=method.server_streaming,
    )
