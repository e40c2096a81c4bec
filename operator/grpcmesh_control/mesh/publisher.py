"""The publisher: mesh inputs (services + endpoints) -> one snapshot per group of Envoys, in the
xDS cache.

- ``update`` records the newest inputs and schedules a rebuild. Rebuilds are debounced: one
  runs once no update has arrived for ``window`` (50 ms), or ``max_delay`` (500 ms) after the
  first pending update if updates keep coming, so a burst costs one rebuild.
- Snapshots are built per *group*, not per node: the cache maps each node to a group
  (``translate.node_group``: the replicas of a service with the same metadata share one), so a
  rebuild costs the same with 2 replicas per service or 200.
- A rebuild builds the ``Registry`` once and rebuilds only the groups whose inputs changed:
  each group remembers the services its snapshot was built from (a sidecar: its own
  MeshService and every backend it names; an ingress: every service), and a rebuild compares
  each service (spec and endpoints) with the one last built, so a change to a leaf service
  rebuilds its own group and its callers', and nothing else. A new catalog, or no successful
  rebuild yet, rebuilds every group. Groups are kept whether their nodes are connected or not,
  so a reconnecting Envoy is answered at once.
- A rebuild is all or nothing: if any snapshot fails to build (``InconsistentSnapshot``, or any
  bug), nothing is published, every group keeps its last good snapshot, and the error is kept
  for ``/status``.
- A node that connects to a group not built yet is built for immediately (a cache listener,
  which runs before its first request is answered), from the last good registry; no debounce
  wait at startup. A node joining a built group costs nothing.
- A sidecar whose MeshService does not exist (deleted, or not created yet) gets no snapshot:
  its group's snapshot is *removed* from the cache, so an Envoy that (re)connects is not handed
  config for a service that is gone; it waits, not ready, until the service exists. An Envoy
  still connected keeps what it has: xDS cannot take config back short of pushing an empty
  snapshot, which would cut the in-flight calls of a replica that is about to be stopped anyway.
- A node whose id or metadata breaks the naming conventions gets nothing, and a problem.

Everything in a group's snapshot is shared by its nodes. What must differ per node (its
certificates) has no place in it: ``mesh.certificates`` serves those beside the group's
resources, per node (``SnapshotCache.set_node_secrets``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from grpcmesh_control.mesh.clock import Clock, SystemClock
from grpcmesh_control.mesh.errors import InvalidNodeId, UnknownNode
from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog
from grpcmesh_control.mesh.translate import (
    NodeKind,
    ProxyNode,
    Registry,
    Snapshot,
    SnapshotBuilder,
)
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
"""Translation of one node; a ``translate.SnapshotBuilder`` unless a test injects another."""


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
    """Nodes the cache knows (connected or not)."""
    groups: int = 0
    """Snapshot groups they make up."""
    built: int = 0
    """Groups whose snapshot this rebuild built (the rest were unaffected by the change)."""
    error: str | None = None


@dataclass(frozen=True)
class _Built:
    """What a group's current snapshot (or its absence) was built from."""

    depends_on: frozenset[str] | None
    """Service names it read; None: every service (an ingress)."""
    problem: str | None = None
    retry: bool = False
    """Its build failed: the next rebuild tries again, whatever changed."""
    version: str | None = None
    """The snapshot version published (None: removed); the cache holding another means it was
    written around the publisher (a test, an operator's hand), and the next rebuild repairs it."""

    def affected_by(self, changed: frozenset[str]) -> bool:
        if self.retry:
            return True
        return bool(changed) if self.depends_on is None else not self.depends_on.isdisjoint(changed)


@dataclass
class _Plan:
    snapshots: dict[str, VersionedSnapshot | None] = field(default_factory=dict)
    built: dict[str, _Built] = field(default_factory=dict)


_ServiceInputs = tuple[MeshService, tuple[Endpoint, ...]]


def _service_inputs(registry: Registry) -> dict[str, _ServiceInputs]:
    """What each service's part of any snapshot is made of, to compare between rebuilds."""
    return {svc.name: (svc, registry.endpoints[svc.name]) for svc in registry.services}


def _changed(
    before: Mapping[str, _ServiceInputs], after: Mapping[str, _ServiceInputs]
) -> frozenset[str]:
    """Services added, removed, or different (compared by value; unchanged ones are usually
    the very same objects, which compares at once)."""
    return frozenset(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )


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
        build: Builder | None = None,
        on_rebuild: Callable[[RebuildOutcome], None] | None = None,
    ) -> None:
        self._cache = cache
        self._catalog = catalog or MethodCatalog()
        self._clock: Clock = clock or SystemClock()
        self._window = window
        self._max_delay = max_delay
        # Remembers translated parts between groups and rebuilds (a backend's clusters).
        self._build = build if build is not None else SnapshotBuilder()
        self._on_rebuild = on_rebuild or (lambda outcome: None)

        self._inputs = MeshInputs()
        self._built: MeshInputs | None = None
        self._registry: Registry | None = None
        # Per service, what the last successful rebuild built from (None: rebuild everything).
        self._service_inputs: dict[str, _ServiceInputs] | None = None
        # group -> what its current snapshot was built from
        self._groups: dict[str, _Built] = {}
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
        self._service_inputs = None  # retry safety and streaming can change every route
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
        """Build the snapshot of every group the newest inputs affect and publish them all, or
        (on any failure) none. Synchronous: callable at startup, before serving."""
        inputs = self._inputs
        self._dirty.clear()
        started = time.perf_counter()
        members = self._cache.node_groups()
        try:
            registry = Registry.build(inputs.services, inputs.endpoint_map, self._catalog)
            service_inputs = _service_inputs(registry)
            previous = self._service_inputs
            changed = None if previous is None else _changed(previous, service_inputs)
            plan = _Plan()
            for group, status in members.items():
                built = self._groups.get(group)
                if (
                    changed is None
                    or built is None
                    or built.affected_by(changed)
                    or self._cache_version(group) != built.version
                ):
                    self._plan_group(plan, registry, group, status)
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
            pushed = sum(self._publish(group, snap) for group, snap in plan.snapshots.items())
            self._groups.update(plan.built)
            self._registry, self._built, self._last_error = registry, inputs, None
            self._service_inputs = service_inputs
            outcome = RebuildOutcome(
                ok=True,
                version=inputs.version,
                duration=time.perf_counter() - started,
                nodes=self._cache.node_count(),
                groups=len(members),
                built=len(plan.snapshots),
            )
            log.info(
                "rebuilt inputs %s: %d of %d groups (%d nodes), %d snapshots changed in %.1f ms",
                inputs.version,
                outcome.built,
                outcome.groups,
                outcome.nodes,
                pushed,
                outcome.duration * 1000,
            )
        if not self._dirty.is_set():
            self._idle.set()
        self._on_rebuild(outcome)
        return outcome

    def _cache_version(self, group: str) -> str | None:
        snapshot = self._cache.snapshot(group)
        return None if snapshot is None else snapshot.version

    def _plan_group(self, plan: _Plan, registry: Registry, group: str, member: NodeStatus) -> None:
        """Add one group's snapshot (or removal, and its problem) to ``plan``; other errors
        propagate and fail the rebuild."""
        try:
            node = ProxyNode.from_node(member.node_id, member.metadata)
        except InvalidNodeId as exc:
            # The id and metadata are all it is built from: no input change can help.
            plan.snapshots[group] = None
            plan.built[group] = _Built(frozenset(), str(exc))
            return
        depends_on = _depends_on(registry, node)
        try:
            snapshot = self._build(registry, node).packed
        except UnknownNode as exc:
            plan.snapshots[group] = None
            plan.built[group] = _Built(depends_on, str(exc))
        else:
            plan.snapshots[group] = snapshot
            plan.built[group] = _Built(depends_on, version=snapshot.version)

    def _publish(self, group: str, snapshot: VersionedSnapshot | None) -> bool:
        if snapshot is None:
            had = self._cache.snapshot(group) is not None
            self._cache.remove_snapshot(group)
            return had
        return self._cache.set_snapshot(group, snapshot)

    def _on_node(self, status: NodeStatus) -> None:
        """Cache listener: a node connected (or reconnected with other metadata) to a group
        that has no snapshot built: build it now, before its first request is answered."""
        if not status.connected or status.group in self._groups:
            return
        if self._registry is None:
            self._registry = Registry.build(
                self._inputs.services, self._inputs.endpoint_map, self._catalog
            )
        plan = _Plan()
        try:
            self._plan_group(plan, self._registry, status.group, status)
        except Exception as exc:
            # Raising here would break the node's stream; report it, the next rebuild retries
            # (not the next ACK: the group is recorded, so this is logged once).
            log.exception(
                "building the snapshot of %s (group %s) failed", status.node_id, status.group
            )
            failed = f"building its snapshot failed: {exc}"
            self._groups[status.group] = _Built(None, failed, retry=True)
            return
        self._groups.update(plan.built)
        self._publish(status.group, plan.snapshots[status.group])

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
        built = self._groups.get(self._cache.group_of(node_id))
        return None if built is None else built.problem


def _depends_on(registry: Registry, node: ProxyNode) -> frozenset[str] | None:
    """The services a node's snapshot is built from (``translate.build_snapshot`` reads a
    sidecar's own MeshService and the backends it names, whether they exist yet or not);
    None for an ingress, which routes every exposed service."""
    if node.id.kind is NodeKind.INGRESS:
        return None
    svc = registry.service(node.id.name)
    backends = () if svc is None else (b.name for b in svc.backends if b.external is None)
    return frozenset((node.id.name, *backends))
