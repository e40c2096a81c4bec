"""What the protos say about each method: idempotency and streaming.

Pure data. The mesh needs it to decide, per method, whether a retry is safe (only for methods the
protos mark ``IDEMPOTENT`` or ``NO_SIDE_EFFECTS``) and whether a route deadline would cut a
stream. It is built from protobuf descriptors at the edge
(``grpcmesh_control.mesh.catalogs.catalog_from_descriptors``); tests can build it by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType

__all__ = ["Idempotency", "MethodCatalog", "MethodInfo", "ServiceInfo"]


class Idempotency(StrEnum):
    """``google.protobuf.MethodOptions.IdempotencyLevel``, by the proto's own names."""

    UNKNOWN = "IDEMPOTENCY_UNKNOWN"
    NO_SIDE_EFFECTS = "NO_SIDE_EFFECTS"
    IDEMPOTENT = "IDEMPOTENT"

    @property
    def safe_to_retry(self) -> bool:
        return self is not Idempotency.UNKNOWN


@dataclass(frozen=True)
class MethodInfo:
    """One method of a gRPC service (``name`` is the bare method name, e.g. ``GetProduct``)."""

    name: str
    idempotency: Idempotency = Idempotency.UNKNOWN
    client_streaming: bool = False
    server_streaming: bool = False

    @property
    def streaming(self) -> bool:
        return self.client_streaming or self.server_streaming


@dataclass(frozen=True)
class ServiceInfo:
    """One gRPC service (``name`` fully qualified) and its methods, sorted by name."""

    name: str
    methods: tuple[MethodInfo, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(sorted(self.methods, key=lambda m: m.name)))


@dataclass(frozen=True)
class MethodCatalog:
    """Services by fully-qualified name. Immutable; ``merged`` returns a new catalog."""

    services: tuple[ServiceInfo, ...] = ()
    _index: Mapping[str, Mapping[str, MethodInfo]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.services, key=lambda s: s.name))
        object.__setattr__(self, "services", ordered)
        index = {s.name: MappingProxyType({m.name: m for m in s.methods}) for s in ordered}
        object.__setattr__(self, "_index", MappingProxyType(index))

    @classmethod
    def of(cls, services: Mapping[str, Iterable[MethodInfo]]) -> MethodCatalog:
        return cls(tuple(ServiceInfo(name, tuple(ms)) for name, ms in services.items()))

    def knows(self, service: str) -> bool:
        return service in self._index

    def methods(self, service: str) -> tuple[MethodInfo, ...]:
        """Methods of ``service`` sorted by name; empty when the service is unknown."""
        return tuple(self._index.get(service, {}).values())

    def lookup(self, service: str, method: str) -> MethodInfo | None:
        return self._index.get(service, {}).get(method)

    def merged(self, other: MethodCatalog) -> MethodCatalog:
        """Both catalogs; ``other`` wins for a service both define."""
        by_name = {s.name: s for s in self.services} | {s.name: s for s in other.services}
        return MethodCatalog(tuple(by_name.values()))

    @cached_property
    def service_names(self) -> tuple[str, ...]:
        return tuple(self._index)
