"""gRPC server reflection for the services the ingress exposes, answered by the control plane.

Users explore a mesh's public API the way they would a server's (``grpcurl <ingress> list``,
``describe``, a call by name; Postman, grpcui): the ingress routes the reflection services
(``grpc.reflection.v1`` and ``v1alpha``, ``translate.routes.ingress_route_config``) to the
control plane, which answers from the protos it was given (``mesh.catalogs.ProtoSet``), cut
down to exactly the exposed gRPC services: ``list`` names those, and the files it serves hold
no other service (a file defining an exposed and an unexposed service is served without the
latter), only the files they need. An exposed service without protos is not listed: there is
nothing to describe.

The exposed set and the protos are read when a reflection stream starts, so an ``apply`` that
exposes a service is visible to the next ``grpcurl`` run.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from grpcmesh_control.mesh.catalogs import ProtoSet
from grpcmesh_control.mesh.translate.routes import REFLECTION_SERVICES

__all__ = ["ExposedReflection", "exposed_pool"]

log = logging.getLogger(__name__)

# Both reflection versions' messages are the same on the wire (only the package differs), so
# the v1alpha servicer answers v1 too.


def exposed_pool(
    protos: ProtoSet, services: Iterable[str]
) -> tuple[descriptor_pool.DescriptorPool, tuple[str, ...]]:
    """A pool of the files defining ``services`` (other services removed) and the files they
    import, and which of ``services`` it describes. An import missing from ``protos`` (a
    well-known type, when the set was built without ``--include_imports``) comes from the
    protobuf runtime's own pool."""
    wanted = set(services)
    by_name = {f.name: f for f in protos.files}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    found: list[str] = []

    def add(name: str, proto: descriptor_pb2.FileDescriptorProto | None) -> None:
        if name in added:
            return
        if proto is None:
            proto = descriptor_pb2.FileDescriptorProto()
            try:
                descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
            except KeyError:
                raise ValueError(
                    f"{name} is imported but in no descriptor set (build the set with "
                    "--include_imports)"
                ) from None
        for dependency in proto.dependency:
            add(dependency, by_name.get(dependency))
        pool.Add(proto)
        added.add(name)

    roots: list[descriptor_pb2.FileDescriptorProto] = []
    for file in protos.files:
        prefix = f"{file.package}." if file.package else ""
        kept = [s for s in file.service if prefix + s.name in wanted]
        if not kept:
            continue
        trimmed = descriptor_pb2.FileDescriptorProto()
        trimmed.CopyFrom(file)
        del trimmed.service[:]
        trimmed.service.extend(kept)
        roots.append(trimmed)
        found.extend(prefix + s.name for s in kept)
    # A file imported by an exposed one is served for its messages, without its services.
    for name, file in list(by_name.items()):
        if file.service:
            stripped = descriptor_pb2.FileDescriptorProto()
            stripped.CopyFrom(file)
            del stripped.service[:]
            by_name[name] = stripped
    for root in roots:
        by_name[root.name] = root
    for root in roots:
        add(root.name, root)
    return pool, tuple(sorted(found))


class ExposedReflection:
    """The reflection service over ``protos()`` and ``exposed()`` (gRPC service names)."""

    def __init__(
        self, protos: Callable[[], ProtoSet], exposed: Callable[[], Iterable[str]]
    ) -> None:
        self._protos = protos
        self._exposed = exposed
        self._cached: tuple[ProtoSet, tuple[str, ...], ReflectionServicer] | None = None

    def servicer(self) -> ReflectionServicer:
        """The servicer for the current protos and exposure (rebuilt when either changed)."""
        protos, exposed = self._protos(), tuple(sorted(set(self._exposed())))
        cached = self._cached
        if cached is None or cached[0] is not protos or cached[1] != exposed:
            try:
                pool, names = exposed_pool(protos, exposed)
            except (ValueError, TypeError) as exc:  # TypeError: a file the pool cannot build
                log.warning("server reflection describes nothing: %s", exc)
                pool, names = descriptor_pool.DescriptorPool(), ()
            cached = self._cached = (protos, exposed, ReflectionServicer(names, pool=pool))
        return cached[2]

    async def _info(
        self, requests: AsyncIterable[reflection_pb2.ServerReflectionRequest], context: Any
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for response in self.servicer().ServerReflectionInfo(requests, context):
            yield response

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        info = grpc.stream_stream_rpc_method_handler(
            self._info,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
        return [
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": info})
            for name in REFLECTION_SERVICES
        ]
