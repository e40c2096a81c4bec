"""The mesh registry: one read-only view of every MeshService, endpoint and method, built once
per push and shared by every node's translation.

Level-based and tolerant: a problem with one resource (a backend that does not exist yet, two
resources claiming one gRPC service) is reported in ``problems`` and routed around, never
raised, so one bad resource cannot stop the rest of the mesh from being configured. The
operator turns problems into status conditions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from grpcmesh_control.mesh.model.catalog import MethodCatalog
from grpcmesh_control.mesh.model.mesh import Backend, Endpoint, MeshService

__all__ = ["Problem", "Registry"]


@dataclass(frozen=True)
class Problem:
    """Something the registry routed around. ``resource`` is ``namespace/name``."""

    resource: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"MeshService {self.resource}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Registry:
    """Build with ``Registry.build``; every collection is sorted, so output is deterministic."""

    services: tuple[MeshService, ...]
    endpoints: Mapping[str, tuple[Endpoint, ...]]
    catalog: MethodCatalog
    problems: tuple[Problem, ...]
    # gRPC service name -> MeshService name; where the ingress routes each gRPC service.
    grpc_owners: Mapping[str, str]
    _by_name: Mapping[str, MeshService] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({s.name: s for s in self.services}))

    @classmethod
    def build(
        cls,
        services: Iterable[MeshService],
        endpoints: Mapping[str, Iterable[Endpoint]] | None = None,
        catalog: MethodCatalog | None = None,
    ) -> Registry:
        """``endpoints`` maps a MeshService name to its endpoints (all versions, ready or not)."""
        problems: list[Problem] = []
        by_name: dict[str, MeshService] = {}
        # Services are keyed by name alone (a backend is named without namespace): when two
        # namespaces use one name, the first by namespace wins and the other is reported.
        for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
            if svc.name in by_name:
                winner = by_name[svc.name]
                problems.append(
                    Problem(svc.key, "metadata.name", f"name already used by {winner.key}")
                )
                continue
            by_name[svc.name] = svc
        ordered = tuple(by_name[name] for name in sorted(by_name))

        owners: dict[str, str] = {}
        for svc in ordered:
            for grpc_service in svc.grpc.services:
                if grpc_service in owners:
                    problems.append(
                        Problem(
                            svc.key,
                            "spec.grpc.services",
                            f"{grpc_service} is already served by MeshService "
                            f"{by_name[owners[grpc_service]].key}; the ingress routes it there",
                        )
                    )
                    continue
                owners[grpc_service] = svc.name
            for i, backend in enumerate(svc.backends):
                if backend.external is None and backend.name not in by_name:
                    problems.append(
                        Problem(
                            svc.key,
                            f"spec.backends[{i}].name",
                            f"no MeshService {backend.name}; not routable until it exists",
                        )
                    )

        given = endpoints or {}
        known = {
            name: tuple(sorted(given.get(name, ()), key=lambda e: (e.version, e.address, e.port)))
            for name in by_name
        }
        return cls(
            services=ordered,
            endpoints=MappingProxyType(known),
            catalog=catalog or MethodCatalog(),
            problems=tuple(problems),
            grpc_owners=MappingProxyType(owners),
        )

    def service(self, name: str) -> MeshService | None:
        return self._by_name.get(name)

    def endpoints_of(self, service: str, version: str) -> tuple[Endpoint, ...]:
        """Endpoints of one version. Translation asks only for declared versions, so endpoints
        of a version no longer declared (pods still draining, say) are never routed."""
        return tuple(e for e in self.endpoints.get(service, ()) if e.version == version)

    def exposed_services(self) -> tuple[MeshService, ...]:
        """Services routed at the ingress gateway (``spec.expose``), by name."""
        return tuple(s for s in self.services if s.expose)

    def exposed_grpc_services(self) -> tuple[str, ...]:
        """The gRPC services the ingress routes: those of exposed services that own them."""
        return tuple(
            name
            for svc in self.exposed_services()
            for name in svc.grpc.services
            if self.grpc_owners.get(name) == svc.name
        )

    def resolved_backends(self, svc: MeshService) -> tuple[Backend, ...]:
        """``svc``'s backends that can be routed: external ones and existing MeshServices."""
        return tuple(b for b in svc.backends if b.external is not None or b.name in self._by_name)

    def problems_of(self, svc: MeshService) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.resource == svc.key)
