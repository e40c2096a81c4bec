"""Local mode's source of truth: MeshService YAML files in ``RUN/resources/`` and the endpoints
the launcher writes to ``RUN/endpoints.json``.

Parsing and validation are pure (bytes in, values or errors out); only ``read_*`` touch the
disk. Every error names the file, the resource and the field, in the parser's format:
``orders.yaml (MeshService default/orders): spec.backends[3].name: no MeshService shipping``.

Whole-set rules, on top of each document's own (``model.parse_mesh_service``):

- names are unique in the mesh, across namespaces (a backend is named without a namespace);
- a gRPC service is served by one MeshService (the ingress routes by gRPC service);
- every backend that is not external names a MeshService of the set.

The first occurrence (in file name order, then document order) wins; later ones are the errors.
The Kubernetes path tolerates these (``translate.Registry`` reports and routes around them,
since a cluster's resources arrive one by one); local mode refuses them up front, so a typo
is an error at ``apply`` rather than a silently missing route.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpcmesh_control.mesh.errors import FieldError, InvalidResource, InvalidResourceSet
from grpcmesh_control.mesh.model import (
    KIND,
    Endpoint,
    MeshService,
    MethodCatalog,
    parse_mesh_service,
)
from grpcmesh_control.mesh.model.bounds import load_yaml_documents
from grpcmesh_control.mesh.model.mesh import DEFAULT_VERSION

__all__ = [
    "ENDPOINTS_FILE",
    "RESOURCES_DIR",
    "ApplyPlan",
    "EndpointMap",
    "ResourceSet",
    "SourcedService",
    "check_resource_set",
    "content_digest",
    "parse_endpoints",
    "parse_resource_files",
    "plan_apply",
    "plan_delete",
    "read_endpoints",
    "read_resource_files",
]

RESOURCES_DIR = "resources"
ENDPOINTS_FILE = "endpoints.json"
RESOURCE_SUFFIX = ".yaml"

# A plain file name: no directories, not hidden (temporary files of atomic writes are hidden).
_FILE_NAME = re.compile(r"^[A-Za-z0-9][-_.A-Za-z0-9]*$")
FILE_NAME_MAX = 200
"""Characters in an applied file's name: Linux allows 255 bytes, and the atomic write adds a
temporary suffix."""
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENDPOINT_FIELDS = frozenset({"service", "version", "replica", "address", "port", "ready"})

EndpointMap = Mapping[str, tuple[Endpoint, ...]]
"""MeshService name -> its endpoints (every version, ready or not), as ``Registry.build`` takes."""


@dataclass(frozen=True)
class SourcedService:
    """A parsed MeshService, the file it came from (a name in resources/) and ``source``, how
    errors name it (the file, plus the document number in a multi-document file)."""

    file: str
    source: str
    service: MeshService

    @property
    def label(self) -> str:
        return f"{self.source} ({KIND} {self.service.key})"


@dataclass(frozen=True)
class ResourceSet:
    """A valid set of MeshServices, in file name order, then document order."""

    entries: tuple[SourcedService, ...] = ()

    @property
    def services(self) -> tuple[MeshService, ...]:
        return tuple(entry.service for entry in self.entries)

    def file_of(self, key: str) -> str | None:
        """The file defining MeshService ``namespace/name``, if any."""
        return next((e.file for e in self.entries if e.service.key == key), None)


@dataclass(frozen=True)
class ApplyPlan:
    """What an ``apply`` does once validated: write ``filename`` (``content``), delete
    ``removed`` (files whose every resource the applied file now defines), giving ``result``."""

    filename: str
    content: bytes
    applied: tuple[str, ...]
    removed: tuple[str, ...]
    result: ResourceSet


# --- resources -------------------------------------------------------------------------------


def content_digest(parts: Mapping[str, bytes]) -> str:
    """A digest of named contents (``read_resource_files``' result, say): equal for equal
    files, whatever the order. The control plane and the launcher poll ``resources/`` with it,
    and ``apply`` waits until the launcher has followed the digest it wrote."""
    digest = hashlib.sha256()
    for name in sorted(parts):
        for part in (name.encode(), parts[name]):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def read_resource_files(directory: Path) -> dict[str, bytes]:
    """Every ``*.yaml`` file directly in ``directory`` (hidden files skipped), by name."""
    if not directory.is_dir():
        return {}
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.suffix == RESOURCE_SUFFIX and _FILE_NAME.match(path.name) and path.is_file()
    }


def parse_resource_files(
    files: Mapping[str, bytes], *, catalog: MethodCatalog | None = None
) -> ResourceSet:
    """Parse and validate every document of every file, then the set as a whole.

    Raises ``InvalidResourceSet`` listing every failing document (all files are checked).
    """
    entries = _parse_each(files, catalog)
    problems = check_resource_set(entries)
    if problems:
        raise InvalidResourceSet(problems)
    return ResourceSet(entries)


def _parse_each(
    files: Mapping[str, bytes], catalog: MethodCatalog | None
) -> tuple[SourcedService, ...]:
    """Every document on its own (no whole-set rules); raises for any invalid one."""
    entries: list[SourcedService] = []
    problems: list[InvalidResource] = []
    for name in sorted(files):
        for source, doc in _documents(name, files[name], problems):
            try:
                service = parse_mesh_service(doc, source=source, catalog=catalog)
            except InvalidResource as exc:
                problems.append(exc)
            else:
                entries.append(SourcedService(name, source, service))
    if problems:
        raise InvalidResourceSet(problems)
    return tuple(entries)


def check_resource_set(entries: Iterable[SourcedService]) -> list[InvalidResource]:
    """The whole-set rules (see the module docstring); one error per offending document."""
    ordered = list(entries)
    by_name: dict[str, SourcedService] = {}
    owners: dict[str, SourcedService] = {}
    for entry in ordered:
        by_name.setdefault(entry.service.name, entry)
        for grpc_service in entry.service.grpc.services:
            owners.setdefault(grpc_service, entry)

    problems: list[InvalidResource] = []
    for entry in ordered:
        errors = list(_set_errors(entry, by_name, owners))
        if errors:
            problems.append(InvalidResource(entry.label, errors))
    return problems


def _set_errors(
    entry: SourcedService,
    by_name: Mapping[str, SourcedService],
    owners: Mapping[str, SourcedService],
) -> Iterator[FieldError]:
    svc = entry.service
    first = by_name[svc.name]
    if first is not entry:
        where = "defined" if first.service.key == svc.key else f"used by {first.service.key}"
        yield FieldError(
            "metadata.name",
            f"{svc.name!r} is already {where} in {first.source} (names are unique in the mesh)",
        )
        return  # its other rules would only repeat the first definition's
    for i, grpc_service in enumerate(svc.grpc.services):
        owner = owners[grpc_service]
        if owner is not entry:
            yield FieldError(
                f"spec.grpc.services[{i}]",
                f"{grpc_service} is already served by {KIND} {owner.service.key} ({owner.source})",
            )
    for i, backend in enumerate(svc.backends):
        if backend.external is None and backend.name not in by_name:
            yield FieldError(f"spec.backends[{i}].name", f"no {KIND} {backend.name} in the mesh")


def _documents(
    name: str, content: bytes, problems: list[InvalidResource]
) -> Iterator[tuple[str, object]]:
    """(source label, document) for each non-empty document; unreadable files go to problems."""
    try:
        docs = load_yaml_documents(content, source=name)
    except InvalidResource as exc:
        problems.append(exc)
        return
    for i, doc in enumerate(docs, start=1):
        yield (name if len(docs) == 1 else f"{name}, document {i}"), doc


# --- apply -------------------------------------------------------------------------------------


def plan_apply(
    current: Mapping[str, bytes],
    filename: str,
    content: bytes,
    *,
    catalog: MethodCatalog | None = None,
) -> ApplyPlan:
    """Validate applying ``content`` as ``resources/<filename>`` on top of ``current``.

    The file replaces one of the same name. A resource the file defines that lives in another
    file moves here when that other file holds nothing else (the file is deleted); if it holds
    other resources too, the apply is refused, since rewriting a user's file would lose its
    comments. ``.yml`` is stored as ``.yaml``. Raises ``InvalidResourceSet``; nothing is
    written by this function.
    """
    target = _target_name(filename)
    applied = _parse_each({target: content}, catalog)
    if not applied:
        raise InvalidResourceSet(
            [InvalidResource(target, [FieldError("", f"no {KIND} documents")])]
        )
    keys = {entry.service.key for entry in applied}

    others = {name: data for name, data in current.items() if name != target}
    removed: list[str] = []
    blocked: list[InvalidResource] = []
    for name, data in sorted(others.items()):
        try:
            existing = _parse_each({name: data}, catalog)
        except InvalidResourceSet:
            continue  # reported by the union check below, under its own name
        moving = [e for e in existing if e.service.key in keys]
        if not moving:
            continue
        if len(moving) == len(existing):
            removed.append(name)
            continue
        for entry in moving:
            blocked.append(
                InvalidResource(
                    f"{target} ({KIND} {entry.service.key})",
                    [
                        FieldError(
                            "metadata.name",
                            f"already defined in {name} together with other resources; "
                            f"apply it as {name}, or move it out of that file first",
                        )
                    ],
                )
            )
    if blocked:
        raise InvalidResourceSet(blocked)

    union = {name: data for name, data in others.items() if name not in removed}
    union[target] = content
    entries = _parse_each(union, catalog)
    # Blame the applied file, not the resources already there: check it as if it came last
    # (validity does not depend on the order; only who is named does).
    problems = check_resource_set(
        [e for e in entries if e.file != target] + [e for e in entries if e.file == target]
    )
    if problems:
        raise InvalidResourceSet(problems)
    return ApplyPlan(
        filename=target,
        content=content,
        applied=tuple(sorted(keys)),
        removed=tuple(removed),
        result=ResourceSet(entries),
    )


def plan_delete(
    current: Mapping[str, bytes], name: str, *, catalog: MethodCatalog | None = None
) -> ApplyPlan:
    """Validate removing MeshService ``name`` from ``current``: its file is deleted, so it must
    hold nothing else (rewriting a user's file would lose its comments), and no other service
    may still call it. ``ApplyPlan.removed`` names the file; ``content`` is empty. Raises
    ``InvalidResourceSet`` naming the service, or the caller and its field."""
    entries = _parse_each(current, catalog)
    found = [e for e in entries if e.service.name == name]
    if not found:
        known = ", ".join(sorted(e.service.name for e in entries)) or "none"
        raise InvalidResourceSet(
            [
                InvalidResource(
                    name, [FieldError("metadata.name", f"no {KIND} {name!r} (known: {known})")]
                )
            ]
        )
    file = found[0].file
    sharing = [e for e in entries if e.file == file and e.service.name != name]
    if sharing:
        raise InvalidResourceSet(
            [
                InvalidResource(
                    found[0].label,
                    [
                        FieldError(
                            "metadata.name",
                            f"{file} also defines {', '.join(e.service.key for e in sharing)}; "
                            "move it to a file of its own first",
                        )
                    ],
                )
            ]
        )
    rest = [e for e in entries if e.file != file]
    problems = check_resource_set(rest)
    if problems:
        raise InvalidResourceSet(problems)
    return ApplyPlan(
        filename=file,
        content=b"",
        applied=(),
        removed=(file,),
        result=ResourceSet(tuple(rest)),
    )


def _target_name(filename: str) -> str:
    stem, dot, suffix = filename.rpartition(".")
    if len(filename) > FILE_NAME_MAX:
        raise InvalidResourceSet(
            [
                InvalidResource(
                    "X-Filename",
                    [
                        FieldError(
                            "",
                            f"{filename[:40]!r}... is {len(filename)} characters long; "
                            f"at most {FILE_NAME_MAX}",
                        )
                    ],
                )
            ]
        )
    if not _FILE_NAME.match(filename) or not dot or not stem or suffix not in ("yaml", "yml"):
        raise InvalidResourceSet(
            [
                InvalidResource(
                    "X-Filename",
                    [
                        FieldError(
                            "",
                            f"{filename!r} is not a plain file name ending in .yaml "
                            "(letters, digits, '-', '_' and '.'; no directories)",
                        )
                    ],
                )
            ]
        )
    return stem + RESOURCE_SUFFIX


# --- endpoints ---------------------------------------------------------------------------------


def read_endpoints(path: Path) -> bytes | None:
    """The endpoints file's content; None while the launcher has not written one."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def parse_endpoints(content: bytes, *, source: str = ENDPOINTS_FILE) -> EndpointMap:
    """``{"endpoints": [{service, version?, replica?, address, port, ready?}]}`` -> endpoints
    by service. ``version`` defaults to v1 and ``ready`` to true; unknown fields are refused
    (a misspelt ``ready`` must not read as ready). Raises ``InvalidResource`` naming the file
    and each field, e.g. ``endpoints.json: endpoints[2].port: 0 is not a port``."""
    try:
        doc = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidResource(source, [FieldError("", f"not valid JSON: {exc}")]) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("endpoints"), list):
        raise InvalidResource(source, [FieldError("endpoints", "must be a list")])
    errors: list[FieldError] = []
    by_service: dict[str, list[Endpoint]] = {}
    seen: dict[tuple[str, str, int], int] = {}
    for i, item in enumerate(doc["endpoints"]):
        path = f"endpoints[{i}]"
        found = list(_endpoint_errors(path, item))
        if found:
            errors += found
            continue
        endpoint = Endpoint(
            address=item["address"],
            port=item["port"],
            version=item.get("version", DEFAULT_VERSION),
            ready=item.get("ready", True),
        )
        key = (item["service"], endpoint.address, endpoint.port)
        if key in seen:
            errors.append(
                FieldError(
                    path,
                    f"{endpoint.address}:{endpoint.port} of {key[0]} is already "
                    f"endpoints[{seen[key]}]",
                )
            )
            continue
        seen[key] = i
        by_service.setdefault(item["service"], []).append(endpoint)
    if errors:
        raise InvalidResource(source, errors)
    return {name: tuple(endpoints) for name, endpoints in sorted(by_service.items())}


def _endpoint_errors(path: str, item: Any) -> Iterator[FieldError]:
    if not isinstance(item, dict):
        yield FieldError(path, "must be an object")
        return
    for name in sorted(set(item) - _ENDPOINT_FIELDS):
        yield FieldError(f"{path}.{name}", "unknown field")
    for name in ("service", "address", "port"):
        if name not in item:
            yield FieldError(f"{path}.{name}", "required field is missing")
    service = item.get("service")
    if service is not None and (not isinstance(service, str) or not _SERVICE_NAME.match(service)):
        yield FieldError(f"{path}.service", f"{service!r} is not a MeshService name")
    for name in ("version", "replica"):
        value = item.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            yield FieldError(f"{path}.{name}", f"{value!r} is not a non-empty string")
    address = item.get("address")
    if address is not None and not _is_ip(address):
        yield FieldError(f"{path}.address", f"{address!r} is not an IP address")
    port = item.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
    ):
        yield FieldError(f"{path}.port", f"{port!r} is not a port (1-65535)")
    ready = item.get("ready")
    if ready is not None and not isinstance(ready, bool):
        yield FieldError(f"{path}.ready", f"{ready!r} is not a boolean")


def _is_ip(value: object) -> bool:
    # Envoy's EDS endpoints are socket addresses: IPs only, no names to resolve.
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
