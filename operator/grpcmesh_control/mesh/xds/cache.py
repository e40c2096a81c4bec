"""Snapshot cache: per-group snapshots, change notification, and per-node status.

Nodes map to groups through a pluggable function of the node id and the metadata it connected
with (by default ``translate.node_group``: the replicas of a service with the same metadata
share one group), so a snapshot is built, stored and versioned once per group, whatever the
number of proxies. ACK state stays per node.

What must differ per node (its SDS secrets: its certificate and key) never enters a group's
snapshot: ``set_node_secrets`` keeps them per node, and a node is served its *view*
(``node_snapshot``): its group's snapshot with its own secrets layered on. A node's stream
waits on ``wait_for_node_change``, which wakes for either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from grpcmesh_control.mesh.translate.naming import node_group
from grpcmesh_control.mesh.translate.versioned import (
    SECRET,
    TypeResources,
    VersionedSnapshot,
    merge_resources,
)

WORKLOAD_SECRETS = "workload"
"""The source of a node's own certificate and roots (``mesh.certificates``)."""


@dataclass(frozen=True)
class NackRecord:
    type_url: str
    version: str
    message: str
    at: float


@dataclass
class NodeStatus:
    """What the control plane knows about one Envoy (for `status`, metrics and tests)."""

    node_id: str
    group: str
    """The snapshot group it is served from (set again when it connects with metadata)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The node's bootstrap metadata (ports, bind address) from its first request."""
    connected_since: float | None = None
    streams: int = 0
    acked: dict[str, str] = field(default_factory=dict)
    """type URL -> last version the node ACKed."""
    nack: NackRecord | None = None
    """The latest rejection, kept until the node ACKs a newer version of that type."""
    acked_snapshot: str | None = None
    """The version of its group's snapshot (its config) whose every requested type the node
    has ACKed; its own secrets are not part of it (``acked[SECRET]`` says which it holds)."""

    @property
    def connected(self) -> bool:
        return self.streams > 0


GroupOf = Callable[[str, Mapping[str, Any]], str]
"""(node id, its metadata) -> the group whose snapshot it is served."""


class SnapshotCache:
    def __init__(self, group_of: GroupOf = node_group) -> None:
        self._group_of = group_of
        self._snapshots: dict[str, VersionedSnapshot] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._generation: dict[str, int] = {}
        self._nodes: dict[str, NodeStatus] = {}
        # group -> its nodes (a dict as an ordered set), kept as nodes connect, so a rebuild
        # walks groups, not nodes
        self._members: dict[str, dict[str, None]] = {}
        self._listeners: list[Callable[[NodeStatus], None]] = []
        self._secrets: dict[str, TypeResources] = {}
        # node -> source -> its secrets; _secrets holds them merged, as the node is served them
        self._secret_parts: dict[str, dict[str, TypeResources]] = {}
        self._node_generation: dict[str, int] = {}
        self._node_changed: dict[str, asyncio.Event] = {}
        # node -> (group snapshot, its secrets, the view made of them), the last view served
        self._views: dict[str, tuple[VersionedSnapshot, TypeResources, VersionedSnapshot]] = {}

    # --- snapshots -----------------------------------------------------------------------

    def group_of(self, node_id: str) -> str:
        """The group ``node_id`` is served from: as it connected, or as it would with no
        metadata if it never did."""
        status = self._nodes.get(node_id)
        return status.group if status is not None else self._group_of(node_id, {})

    def set_snapshot(self, group: str, snapshot: VersionedSnapshot) -> bool:
        """Publish ``snapshot`` for ``group``; False (and no push) when nothing changed."""
        current = self._snapshots.get(group)
        if current is not None and current.version == snapshot.version:
            return False
        self._snapshots[group] = snapshot
        self._generation[group] = self._generation.get(group, 0) + 1
        event = self._changed.pop(group, None)
        if event is not None:
            event.set()
        return True

    def remove_snapshot(self, group: str) -> None:
        self._snapshots.pop(group, None)

    def snapshot(self, group: str) -> VersionedSnapshot | None:
        return self._snapshots.get(group)

    def config_snapshot(self, node_id: str) -> VersionedSnapshot | None:
        """The config ``node_id`` is served: its group's snapshot, without its secrets."""
        return self._snapshots.get(self.group_of(node_id))

    def node_snapshot(self, node_id: str) -> VersionedSnapshot | None:
        """The snapshot ``node_id`` is served: its group's, with the node's own secrets (if it
        has any) as the ``SECRET`` type; None while its group has none."""
        group = self._snapshots.get(self.group_of(node_id))
        secrets = self._secrets.get(node_id)
        if group is None or secrets is None:
            return group
        known = self._views.get(node_id)
        if known is not None and known[0] is group and known[1] is secrets:
            return known[2]
        view = VersionedSnapshot.from_types({**group.by_type, SECRET: secrets})
        self._views[node_id] = (group, secrets, view)
        return view

    def set_node_secrets(
        self, node_id: str, secrets: TypeResources, *, source: str = WORKLOAD_SECRETS
    ) -> bool:
        """Serve ``node_id`` these SDS secrets (``pack_resources(SECRET, ...)``) beside its
        group's snapshot, in place of those ``source`` set before; the node is served every
        source's together (the ingress gateway: its workload certificate and its server
        certificate for outside clients). False (and no push) when they did not change."""
        parts = self._secret_parts.setdefault(node_id, {})
        current = parts.get(source)
        if current is not None and current.version == secrets.version:
            return False
        parts[source] = secrets
        if len(parts) == 1:
            self._secrets[node_id] = secrets
        else:
            self._secrets[node_id] = merge_resources(parts[s] for s in sorted(parts))
        self._node_generation[node_id] = self._node_generation.get(node_id, 0) + 1
        event = self._node_changed.pop(node_id, None)
        if event is not None:
            event.set()
        return True

    def node_secrets(self, node_id: str) -> TypeResources | None:
        return self._secrets.get(node_id)

    def forget_node_secrets(self, node_id: str) -> None:
        """Drop a node's secrets (it is gone: no stream of it waits); a node that comes back
        is issued new ones, and a stream of it starts counting generations from 0 again."""
        self._secrets.pop(node_id, None)
        self._secret_parts.pop(node_id, None)
        self._views.pop(node_id, None)
        self._node_generation.pop(node_id, None)
        self._node_changed.pop(node_id, None)

    def node_generation(self, node_id: str) -> int:
        """Grows whenever the node's view may have changed (its group's snapshot or its own
        secrets)."""
        return self.generation(self.group_of(node_id)) + self._node_generation.get(node_id, 0)

    async def wait_for_node_change(self, node_id: str, seen_generation: int) -> int:
        """Return the node's generation once it is past ``seen_generation``."""
        while self.node_generation(node_id) <= seen_generation:
            group = self._changed.setdefault(self.group_of(node_id), asyncio.Event())
            own = self._node_changed.setdefault(node_id, asyncio.Event())
            waits = [asyncio.ensure_future(group.wait()), asyncio.ensure_future(own.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return self.node_generation(node_id)

    def groups(self) -> list[str]:
        return sorted(self._snapshots)

    def generation(self, group: str) -> int:
        return self._generation.get(group, 0)

    async def wait_for_change(self, group: str, seen_generation: int) -> int:
        """Return the group's generation once it is past ``seen_generation``."""
        while self.generation(group) <= seen_generation:
            event = self._changed.setdefault(group, asyncio.Event())
            await event.wait()
        return self.generation(group)

    # --- node status ---------------------------------------------------------------------

    def subscribe(self, listener: Callable[[NodeStatus], None]) -> None:
        """Called after every status change (connect, ACK, NACK, disconnect)."""
        self._listeners.append(listener)

    def node(self, node_id: str) -> NodeStatus:
        status = self._nodes.get(node_id)
        if status is None:
            status = self._nodes[node_id] = NodeStatus(node_id, self._group_of(node_id, {}))
            self._members.setdefault(status.group, {})[node_id] = None
        return status

    def nodes(self) -> list[NodeStatus]:
        return [self._nodes[n] for n in sorted(self._nodes)]

    def node_count(self) -> int:
        return len(self._nodes)

    def node_groups(self) -> dict[str, NodeStatus]:
        """Every group some node belongs to, with one of its nodes (the first to join): what
        the group's snapshot is built from, since its nodes differ only by replica."""
        return {group: self._nodes[next(iter(ids))] for group, ids in self._members.items()}

    def _leave(self, status: NodeStatus) -> None:
        members = self._members.get(status.group)
        if members is not None:
            members.pop(status.node_id, None)
            if not members:
                del self._members[status.group]

    def connected(self, node_id: str, metadata: dict[str, Any] | None = None) -> NodeStatus:
        """Record a stream. Listeners run before the first response is computed, so one that
        publishes a snapshot for a new node lets its first request be answered at once."""
        status = self.node(node_id)
        if metadata is not None:
            status.metadata = metadata
            group = self._group_of(node_id, metadata)
            if group != status.group:
                self._leave(status)
                status.group = group
                self._members.setdefault(group, {})[node_id] = None
        if status.streams == 0:
            status.connected_since = time.time()
        status.streams += 1
        self._notify(status)
        return status

    def disconnected(self, node_id: str) -> None:
        status = self.node(node_id)
        status.streams = max(0, status.streams - 1)
        if status.streams == 0:
            status.connected_since = None
        self._notify(status)

    def record_ack(self, node_id: str, type_url: str, version: str, watched: set[str]) -> None:
        status = self.node(node_id)
        status.acked[type_url] = version
        if (
            status.nack is not None
            and status.nack.type_url == type_url
            and (status.nack.version != version)
        ):
            status.nack = None
        # Convergence is about the config (the group snapshot); a node's secrets change on
        # their own schedule (renewals, a restarted control plane issuing anew).
        snapshot = self._snapshots.get(status.group)
        if snapshot is not None and all(
            status.acked.get(t) == snapshot.of(t).version for t in watched if t != SECRET
        ):
            status.acked_snapshot = snapshot.version
        self._notify(status)

    def record_nack(self, node_id: str, type_url: str, version: str, message: str) -> None:
        status = self.node(node_id)
        status.nack = NackRecord(type_url, version, message, time.time())
        self._notify(status)

    def _notify(self, status: NodeStatus) -> None:
        for listener in self._listeners:
            listener(status)
