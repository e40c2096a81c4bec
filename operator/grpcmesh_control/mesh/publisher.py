"""The publisher: mesh inputs (services + endpoints) -> one snapshot per Envoy, in the xDS cache.

- ``update`` records the newest inputs and schedules a rebuild. Rebuilds are debounced: one
  runs once no update has arrived for ``window`` (50 ms), or ``max_delay`` (500 ms) after the
  first pending update if updates keep coming, so a burst costs one rebuild.
- A rebuild builds the ``Registry`` once and a snapshot for every node the cache knows
  (connected or not, so a reconnecting Envoy is answered at once). It is all or nothing: if
  any snapshot fails to build (``InconsistentSnapshot``, or any bug), nothing is published,
  every node keeps its last good snapshot, and the error is kept for ``/status``.
- A node that connects is built for immediately (a cache listener, which runs before its first
  request is answered), from the last good registry; no debounce wait at startup.
- A sidecar whose MeshService does not exist (deleted, or not created yet) gets no snapshot:
  its snapshot is *removed* from the cache, so an Envoy that (re)connects is not handed config
  for a service that is gone; it waits, not ready, until the service exists. An Envoy still
  connected keeps what it has: xDS cannot take config back short of pushing an empty snapshot,
  which would cut the in-flight calls of a replica that is about to be stopped anyway.
- A node whose id or metadata breaks the naming conventions gets nothing, and a problem.

Nodes map to cache groups one to one (``SnapshotCache``'s default ``group_of``): snapshots
differ per node (ports come from each node's metadata).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from grpcmesh_control.mesh.clock import Clock, SystemClock
from grpcmesh_control.mesh.errors import InvalidNodeId, UnknownNode
from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog
from grpcmesh_control.mesh.translate import ProxyNode, Registry, Snapshot, build_snapshot
from grpcmesh_control.mesh.xds import NodeStatus, SnapshotCache, VersionedSnapshot

__all__ = [
    "DEFAULT_MAX_DELAY",
    "DEFAULT_WINDOW",
    "Builder",
    "MeshInputs",
    "Publisher",
    "RebuildOutcome",
]

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 0.05
DEFAULT_MAX_DELAY = 0.5
_VERSION_CHARS = 16

Builder = Callable[[Registry, ProxyNode], Snapshot]
"""Translation of one node; ``translate.build_snapshot`` unless a test injects another."""


@dataclass(frozen=True)
class MeshInputs:
    """What snapshots are built from. ``version`` is a content hash: equal inputs, equal version,
    in any process (a restarted control plane reports the version it reported before)."""

    services: tuple[MeshService, ...] = ()
    endpoints: tuple[tuple[str, tuple[Endpoint, ...]], ...] = ()

    @classmethod
    def of(
        cls, services: Iterable[MeshService], endpoints: Mapping[str, Iterable[Endpoint]]
    ) -> MeshInputs:
        # Sorted, so the same content in any order is the same inputs (and version).
        return cls(
            tuple(sorted(services, key=lambda s: (s.namespace, s.name))),
            tuple(
                (name, tuple(sorted(endpoints[name], key=_endpoint_order)))
                for name in sorted(endpoints)
            ),
        )

    @property
    def endpoint_map(self) -> dict[str, tuple[Endpoint, ...]]:
        return dict(self.endpoints)

    @cached_property
    def version(self) -> str:
        # repr of frozen dataclasses, tuples, strings, numbers and enums is deterministic across
        # processes; the model holds no dicts or sets (a test walks it to keep that true). It is
        # ~15x cheaper than dataclasses.asdict + json, which dominated a 1000-service rebuild
        # (bench/xds_convergence.py).
        payload = repr((self.services, self.endpoints))
        return hashlib.sha256(payload.encode()).hexdigest()[:_VERSION_CHARS]


def _endpoint_order(endpoint: Endpoint) -> tuple[str, str, int, bool]:
    return (endpoint.version, endpoint.address, endpoint.port, endpoint.ready)


@dataclass(frozen=True)
class RebuildOutcome:
    """One rebuild: ``ok`` False means nothing was published (``error`` says why)."""

    ok: bool
    version: str
    duration: float
    nodes: int = 0
    built: int = 0
    """Snapshots built by this rebuild."""
    error: str | None = None


@dataclass
class _Plan:
    snapshots: dict[str, VersionedSnapshot | None] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


class Publisher:
    """Owns the path from inputs to the cache (see the module docstring). ``run`` and
    ``wait_settled`` belong to one event loop; the rest is synchronous, for that loop's thread."""

    def __init__(
        self,
        cache: SnapshotCache,
        catalog: MethodCatalog | None = None,
        *,
        clock: Clock | None = None,
        window: float = DEFAULT_WINDOW,
        max_delay: float = DEFAULT_MAX_DELAY,
        build: Builder = build_snapshot,
        on_rebuild: Callable[[RebuildOutcome], None] | None = None,
    ) -> None:
        self._cache = cache
        self._catalog = catalog or MethodCatalog()
        self._clock: Clock = clock or SystemClock()
        self._window = window
        self._max_delay = max_delay
        self._build = build
        self._on_rebuild = on_rebuild or (lambda outcome: None)

        self._inputs = MeshInputs()
        self._built: MeshInputs | None = None
        self._registry: Registry | None = None
        # node id -> the metadata its current snapshot (or problem) was computed from
        self._built_for: dict[str, dict[str, Any]] = {}
        self._node_problems: dict[str, str] = {}
        self._last_error: str | None = None
        self._updates = 0
        self._dirty = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        cache.subscribe(self._on_node)

    # --- inputs and the debounce loop ------------------------------------------------------

    def update(
        self, services: Iterable[MeshService], endpoints: Mapping[str, Iterable[Endpoint]]
    ) -> None:
        """Take the newest inputs; a rebuild follows after the debounce window."""
        self._inputs = MeshInputs.of(services, endpoints)
        self._schedule_rebuild()

    def set_catalog(self, catalog: MethodCatalog) -> None:
        """Rebuild with ``catalog`` (retry safety and streaming come from it) after the
        debounce window, like an input change."""
        self._catalog = catalog
        self._schedule_rebuild()

    def _schedule_rebuild(self) -> None:
        self._updates += 1
        self._idle.clear()
        self._dirty.set()

    async def run(self) -> None:
        """Rebuild after each debounced burst of updates, until cancelled."""
        while True:
            await self._dirty.wait()
            first = self._clock.monotonic()
            while True:
                seen = self._updates
                await self._clock.sleep(self._window)
                quiet = self._updates == seen
                if quiet or self._clock.monotonic() - first >= self._max_delay:
                    break
            if self._dirty.is_set():  # not already done by a direct rebuild()
                self.rebuild()

    async def wait_settled(self) -> None:
        """Return once every update so far has been rebuilt (successfully or not)."""
        await self._idle.wait()

    # --- rebuilding ------------------------------------------------------------------------

    def rebuild(self) -> RebuildOutcome:
        """Build every known node's snapshot from the newest inputs and publish them all, or
        (on any failure) none. Synchronous: callable at startup, before serving."""
        inputs = self._inputs
        self._dirty.clear()
        started = time.perf_counter()
        try:
            registry = Registry.build(inputs.services, inputs.endpoint_map, self._catalog)
            plan = _Plan()
            for status in self._cache.nodes():
                self._plan_node(plan, registry, status.node_id, status.metadata)
        except Exception as exc:
            # Never let a translation bug take the mesh down: keep serving the last good set.
            log.exception("rebuild of inputs %s failed; keeping the last good", inputs.version)
            outcome = RebuildOutcome(
                ok=False,
                version=inputs.version,
                duration=time.perf_counter() - started,
                error=f"rebuild of inputs {inputs.version} failed: {exc}",
            )
            self._last_error = outcome.error
        else:
            changed = sum(self._publish(node_id, snap) for node_id, snap in plan.snapshots.items())
            self._node_problems = plan.problems
            self._built_for = {s.node_id: s.metadata for s in self._cache.nodes()}
            self._registry, self._built, self._last_error = registry, inputs, None
            outcome = RebuildOutcome(
                ok=True,
                version=inputs.version,
                duration=time.perf_counter() - started,
                nodes=len(plan.snapshots),
                built=len(plan.snapshots),
            )
            log.info(
                "rebuilt inputs %s: %d nodes, %d snapshots changed in %.1f ms",
                inputs.version,
                outcome.nodes,
                changed,
                outcome.duration * 1000,
            )
        if not self._dirty.is_set():
            self._idle.set()
        self._on_rebuild(outcome)
        return outcome

    def _plan_node(
        self, plan: _Plan, registry: Registry, node_id: str, metadata: Mapping[str, Any]
    ) -> None:
        """Add one node's snapshot (or removal, and its problem) to ``plan``; other errors
        propagate and fail the rebuild."""
        try:
            node = ProxyNode.from_node(node_id, metadata)
            plan.snapshots[node_id] = self._build(registry, node).packed
        except (UnknownNode, InvalidNodeId) as exc:
            plan.snapshots[node_id] = None
            plan.problems[node_id] = str(exc)

    def _publish(self, node_id: str, snapshot: VersionedSnapshot | None) -> bool:
        group = self._cache.group_of(node_id)
        if snapshot is None:
            had = self._cache.snapshot(group) is not None
            self._cache.remove_snapshot(group)
            return had
        return self._cache.set_snapshot(group, snapshot)

    def _on_node(self, status: NodeStatus) -> None:
        """Cache listener: a node connected (or reconnected with other metadata) that has no
        snapshot built for it: build one now, before its first request is answered."""
        node_id = status.node_id
        if not status.connected:
            return
        if node_id in self._built_for and self._built_for[node_id] == status.metadata:
            return
        self._built_for[node_id] = status.metadata
        if self._registry is None:
            self._registry = Registry.build(
                self._inputs.services, self._inputs.endpoint_map, self._catalog
            )
        plan = _Plan()
        try:
            self._plan_node(plan, self._registry, node_id, status.metadata)
        except Exception as exc:
            # Raising here would break the node's stream; report it, the next rebuild retries
            # (not the next ACK: _built_for stays set, so this is logged once).
            log.exception("building the snapshot of %s failed", node_id)
            self._node_problems[node_id] = f"building its snapshot failed: {exc}"
            return
        self._node_problems.pop(node_id, None)
        self._node_problems.update(plan.problems)
        self._publish(node_id, plan.snapshots[node_id])

    # --- what status reports ---------------------------------------------------------------

    @property
    def version(self) -> str | None:
        """Version of the inputs the published snapshots were built from (None before any)."""
        return None if self._built is None else self._built.version

    @property
    def registry(self) -> Registry | None:
        """The registry of the last successful rebuild (None before any)."""
        return self._registry

    @property
    def inputs(self) -> MeshInputs:
        """The newest inputs (maybe not built yet)."""
        return self._inputs

    @property
    def last_error(self) -> str | None:
        """Why the latest rebuild failed; None once one succeeds."""
        return self._last_error

    def problems(self) -> list[str]:
        """What the mesh routes around (registry problems) and the latest rebuild failure."""
        found = [str(p) for p in self._registry.problems] if self._registry is not None else []
        if self._last_error is not None:
            found.append(self._last_error)
        return found

    def node_problem(self, node_id: str) -> str | None:
        """Why ``node_id`` has no snapshot (unknown service, bad node id), if it has none."""
        return self._node_problems.get(node_id)
