"""Local mode's inputs, live: the run directory's ``resources/*.yaml`` and ``endpoints.json``,
polled by content hash, plus an apply in two steps, ``plan`` (validate) and ``write``
(atomically), which ``ControlPlane.apply`` runs with the protos an apply brings in between.

Each source keeps its last valid content: an invalid edit (a half-written file, a typo) is
reported in ``problems`` and ignored until fixed; the mesh keeps running on what was valid.
Polling rather than inotify: portable, and a 100 ms poll of a few small files costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.local.sources import (
    ENDPOINTS_FILE,
    RESOURCES_DIR,
    ApplyPlan,
    EndpointMap,
    ResourceSet,
    content_digest,
    parse_endpoints,
    parse_resource_files,
    plan_apply,
    plan_delete,
    read_endpoints,
    read_resource_files,
)
from grpcmesh_control.mesh.clock import Clock
from grpcmesh_control.mesh.errors import InvalidResource, InvalidResourceSet
from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog

__all__ = ["DEFAULT_POLL_INTERVAL", "FileSources", "OnChange"]

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 0.1

OnChange = Callable[[tuple[MeshService, ...], Mapping[str, tuple[Endpoint, ...]]], None]


class FileSources:
    """The run directory as the mesh's source of truth. ``on_change`` gets the valid services
    and endpoints whenever either changes (``Publisher.update``)."""

    def __init__(
        self, state_dir: Path, on_change: OnChange, *, catalog: MethodCatalog | None = None
    ) -> None:
        # Absolute, so logs and errors say where; relative paths would also follow a chdir.
        self.resources_dir = state_dir.absolute() / RESOURCES_DIR
        self.endpoints_file = state_dir.absolute() / ENDPOINTS_FILE
        self._on_change = on_change
        self._catalog = catalog
        self._resources_digest: str | None = None
        self._endpoints_digest: str | None = None
        self.resources = ResourceSet()
        self.endpoints: EndpointMap = {}
        self._resource_problems: tuple[str, ...] = ()
        self._endpoint_problems: tuple[str, ...] = ()
        self._read_problem: str | None = None

    @property
    def problems(self) -> list[str]:
        """Why a source is not in use right now (its last valid content is)."""
        found = [*self._resource_problems, *self._endpoint_problems]
        if self._read_problem is not None:
            found.append(self._read_problem)
        return found

    def reload(self) -> bool:
        """Read both sources; parse whichever changed; call ``on_change`` if the valid content
        changed. Returns whether it did."""
        try:
            files = read_resource_files(self.resources_dir)
            endpoints = read_endpoints(self.endpoints_file)
        except OSError as exc:  # a file replaced between listing and reading: next poll
            self._read_problem = f"reading {exc.filename}: {exc.strerror}"
            return False
        self._read_problem = None
        changed = self._load_resources(files)
        changed = self._load_endpoints(endpoints) or changed
        if changed:
            self._on_change(self.resources.services, self.endpoints)
        return changed

    def _load_resources(self, files: Mapping[str, bytes]) -> bool:
        digest = content_digest(files)
        if digest == self._resources_digest:
            return False
        self._resources_digest = digest
        try:
            loaded = parse_resource_files(files, catalog=self._catalog)
        except InvalidResourceSet as exc:
            self._resource_problems = tuple(f"{RESOURCES_DIR}/{p}" for p in exc.problems)
            log.warning("invalid resources, keeping the last valid set:\n%s", exc)
            return False
        self._resource_problems = ()
        if loaded == self.resources:
            return False
        self.resources = loaded
        log.info("resources: %s", ", ".join(e.label for e in loaded.entries) or "none")
        return True

    def _load_endpoints(self, content: bytes | None) -> bool:
        digest = content_digest({} if content is None else {ENDPOINTS_FILE: content})
        if digest == self._endpoints_digest:
            return False
        self._endpoints_digest = digest
        try:
            loaded = {} if content is None else parse_endpoints(content)
        except InvalidResource as exc:
            self._endpoint_problems = (str(exc),)
            log.warning("invalid endpoints, keeping the last valid ones: %s", exc)
            return False
        self._endpoint_problems = ()
        if loaded == self.endpoints:
            return False
        self.endpoints = loaded
        return True

    def set_catalog(self, catalog: MethodCatalog) -> None:
        """Validate with ``catalog`` from now on (new protos): the resources are parsed again
        at the next ``reload``, and may now be refused (a method name the protos lack)."""
        self._catalog = catalog
        self._resources_digest = None

    async def watch(self, clock: Clock, interval: float = DEFAULT_POLL_INTERVAL) -> None:
        """Reload every ``interval`` seconds, until cancelled."""
        while True:
            await clock.sleep(interval)
            self.reload()

    def delete(self, name: str) -> ApplyPlan:
        """Remove MeshService ``name`` (its file) if the rest stays valid
        (``sources.plan_delete``), and reload. Raises ``InvalidResourceSet``, changing nothing."""
        plan = plan_delete(read_resource_files(self.resources_dir), name, catalog=self._catalog)
        for file in plan.removed:
            (self.resources_dir / file).unlink(missing_ok=True)
        log.info("deleted %s (%s)", name, ", ".join(plan.removed))
        self.reload()
        return plan

    def plan(
        self, filename: str, content: bytes, *, catalog: MethodCatalog | None = None
    ) -> ApplyPlan:
        """Validate applying ``content`` as ``resources/<filename>`` (``sources.plan_apply``),
        with ``catalog`` if given (protos the apply brings), else the current one. Writes
        nothing; raises ``InvalidResourceSet``."""
        return plan_apply(
            read_resource_files(self.resources_dir),
            filename,
            content,
            catalog=catalog if catalog is not None else self._catalog,
        )

    def write(self, plan: ApplyPlan) -> ApplyPlan:
        """Carry out a validated ``plan``: write its file atomically, delete the files whose
        resources moved into it, and reload."""
        self.resources_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.resources_dir / plan.filename, plan.content)
        for name in plan.removed:
            (self.resources_dir / name).unlink(missing_ok=True)
        log.info("applied %s (%s)", plan.filename, ", ".join(plan.applied))
        self.reload()
        return plan
