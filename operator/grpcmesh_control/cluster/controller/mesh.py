"""The mesh registry's inputs as the API shows them: MeshServices and the EndpointSlices of
their per-version Services, folded into what ``Publisher.update`` takes.

kopf's event handlers feed ``MeshState`` (``set_service``/``drop_service``/``set_slice``/
``drop_slice``); each change republishes, and the publisher debounces bursts into one rebuild.
An endpoint is ready only when its slice says ``ready`` and not ``terminating``, so a draining
pod leaves the load assignment before it stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from grpcmesh_control.cluster.objects.desired import GRPC_PORT_NAME
from grpcmesh_control.cluster.objects.names import version_service_name
from grpcmesh_control.mesh.errors import InvalidResource
from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog, parse_mesh_service

__all__ = ["SERVICE_NAME_LABEL", "MeshState", "slice_endpoints"]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

Key = tuple[str, str]  # (namespace, name)
Publish = Callable[[Iterable[MeshService], Mapping[str, Iterable[Endpoint]]], None]


def slice_endpoints(slice_body: Mapping[str, Any], version: str) -> list[Endpoint]:
    """Endpoints of one EndpointSlice: each address on the slice's ``grpc`` port (the
    sidecar's inbound port the Service targets)."""
    ports = [p for p in slice_body.get("ports") or [] if isinstance(p, Mapping)]
    port = next((p.get("port") for p in ports if p.get("name") == GRPC_PORT_NAME), None)
    if port is None and len(ports) == 1:
        port = ports[0].get("port")
    if not isinstance(port, int):
        return []
    found = []
    for endpoint in slice_body.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        # ready unset means ready (API convention); terminating overrides it: drain.
        ready = conditions.get("ready", True) is not False and not conditions.get("terminating")
        found += [Endpoint(str(a), port, version, ready) for a in endpoint.get("addresses") or []]
    return found


@dataclass(frozen=True)
class _Slice:
    namespace: str
    service: str
    """The Kubernetes Service it belongs to (``kubernetes.io/service-name``)."""
    body: Mapping[str, Any]

    @property
    def content(self) -> tuple[str, object, object]:
        """What the registry reads of it (metadata churn is not a change)."""
        return self.service, self.body.get("endpoints"), self.body.get("ports")


class MeshState:
    """Latest MeshServices (parsed, plus invalid ones by their error) and EndpointSlices."""

    def __init__(self, publish: Publish, catalog: MethodCatalog | None = None) -> None:
        self._publish = publish
        self._catalog = catalog
        self._services: dict[Key, MeshService] = {}
        self._errors: dict[Key, str] = {}
        self._slices: dict[Key, _Slice] = {}

    # --- inputs ----------------------------------------------------------------------------

    def set_service(self, body: Mapping[str, Any]) -> MeshService | None:
        """Record a MeshService; its parsed form, or None if invalid (the error is kept, and
        so is its last valid form)."""
        key = _key(body)
        try:
            svc = parse_mesh_service(_document(body), catalog=self._catalog)
        except InvalidResource as exc:
            # The last valid spec stays in the mesh (as local mode keeps a file's last valid
            # content): a typo must not cut the service's routes; the status reports it.
            self._errors[key] = str(exc)
            return None
        self._errors.pop(key, None)
        if self._services.get(key) == svc:
            # Most events change status or annotations, not the spec: the mesh is the same,
            # and recomputing its inputs is O(services) per event.
            return svc
        self._services[key] = svc
        self._changed()
        return svc

    @property
    def catalog(self) -> MethodCatalog | None:
        return self._catalog

    def set_catalog(self, catalog: MethodCatalog) -> None:
        """Validate MeshServices set from now on against ``catalog``."""
        self._catalog = catalog

    def drop_service(self, namespace: str, name: str) -> None:
        self._services.pop((namespace, name), None)
        self._errors.pop((namespace, name), None)
        self._changed()

    def set_slice(self, body: Mapping[str, Any]) -> None:
        labels = body.get("metadata", {}).get("labels") or {}
        service = labels.get(SERVICE_NAME_LABEL)
        if not service:
            return
        namespace, name = _key(body)
        new = _Slice(namespace, str(service), body)
        old = self._slices.get((namespace, name))
        self._slices[(namespace, name)] = new
        if old is None or old.content != new.content:
            self._changed()

    def drop_slice(self, namespace: str, name: str) -> None:
        if self._slices.pop((namespace, name), None) is not None:
            self._changed()

    # --- views -----------------------------------------------------------------------------

    def service(self, namespace: str, name: str) -> MeshService | None:
        return self._services.get((namespace, name))

    def spec_error(self, namespace: str, name: str) -> str | None:
        return self._errors.get((namespace, name))

    def problems(self) -> list[str]:
        """Each MeshService whose current spec does not parse, with why (``/status``)."""
        return [
            f"MeshService {ns}/{name}: {error}"
            for (ns, name), error in sorted(self._errors.items())
        ]

    def invalid_count(self) -> int:
        """MeshServices whose current spec does not parse (their last valid one is in use)."""
        return len(self._errors)

    def services(self) -> list[MeshService]:
        return list(self._services.values())

    def key_of(self, name: str) -> Key | None:
        """The MeshService named ``name`` (names are mesh-wide unique, as node ids assume)."""
        return next((key for key, svc in self._services.items() if svc.name == name), None)

    def owner_of_slice(self, body: Mapping[str, Any]) -> Key | None:
        """The MeshService whose per-version Service an EndpointSlice belongs to."""
        labels = body.get("metadata", {}).get("labels") or {}
        namespace = str(body.get("metadata", {}).get("namespace") or "")
        for key, svc in self._services.items():
            names = {version_service_name(svc.name, v.name) for v in svc.versions}
            if key[0] == namespace and labels.get(SERVICE_NAME_LABEL) in names:
                return key
        return None

    def endpoints(self) -> dict[str, tuple[Endpoint, ...]]:
        """MeshService name -> endpoints of every version (names are mesh-wide unique)."""
        versions: dict[Key, tuple[str, str]] = {}
        for (namespace, _), svc in self._services.items():
            for version in svc.versions:
                owner = (namespace, version_service_name(svc.name, version.name))
                versions[owner] = (svc.name, version.name)
        found: dict[str, list[Endpoint]] = {svc.name: [] for svc in self._services.values()}
        for item in self._slices.values():
            target = versions.get((item.namespace, item.service))
            if target is not None:
                found[target[0]] += slice_endpoints(item.body, target[1])
        return {name: tuple(endpoints) for name, endpoints in found.items()}

    def _changed(self) -> None:
        self._publish(self.services(), self.endpoints())


def _document(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the model parses: the API adds uid, managedFields, status... that the CRD's
    strict document schema does not describe."""
    metadata = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": metadata.get("name"), "namespace": metadata.get("namespace")},
        "spec": body.get("spec"),
    }


def _key(body: Mapping[str, Any]) -> Key:
    metadata = body.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata["name"]))
