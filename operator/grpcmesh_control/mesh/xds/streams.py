"""Per-stream xDS protocol state: state of the world and delta (incremental).

These classes turn requests (and snapshot changes) into responses; they hold no sockets and no
tasks, so the protocol rules are tested directly. Rules they keep:
- a request whose nonce is not the latest sent for its type is stale and ignored;
- an ACK records the version; a NACK records Envoy's error against the version it rejected and
  that version is not sent again (no retry loop) — only a newer version or a change of
  subscription triggers the next response; Envoy keeps serving its last good config;
- after a snapshot change, types go out in PUSH_ORDER (CDS, EDS, LDS, RDS).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.json_format import MessageToDict

from grpcmesh_control.mesh.translate.versioned import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    WILDCARD_TYPES,
    VersionedSnapshot,
)
from grpcmesh_control.mesh.xds.cache import SnapshotCache

_nonces = itertools.count(1)


def _nonce() -> str:
    return str(next(_nonces))


def _ordered(type_urls: Iterable[str]) -> list[str]:
    known = [t for t in PUSH_ORDER if t in type_urls]
    return known + sorted(set(type_urls) - set(PUSH_ORDER))


class ProtocolError(Exception):
    """The peer broke the protocol (e.g. no node id on the first request)."""


@dataclass
class _SotwType:
    names: frozenset[str] = frozenset()
    wildcard: bool = False
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    nonce: str | None = None
    nacked_version: str | None = None


class SotwStream:
    """One StreamAggregatedResources stream."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.node_id: str | None = None
        self.generation = 0
        self._types: dict[str, _SotwType] = {}

    @property
    def group(self) -> str | None:
        return None if self.node_id is None else self.cache.group_of(self.node_id)

    def _snapshot(self) -> VersionedSnapshot | None:
        return None if self.node_id is None else self.cache.node_snapshot(self.node_id)

    def on_request(
        self, request: discovery_pb2.DiscoveryRequest
    ) -> list[discovery_pb2.DiscoveryResponse]:
        if self.node_id is None:
            if not request.node.id:
                raise ProtocolError("the first DiscoveryRequest on a stream must carry node.id")
            self.node_id = request.node.id
            self.cache.connected(self.node_id, MessageToDict(request.node.metadata))
        type_url = request.type_url
        state = self._types.setdefault(type_url, _SotwType())
        if request.response_nonce:
            if request.response_nonce != state.nonce:
                return []  # stale: Envoy answered an older response; a newer one is in flight
            if request.HasField("error_detail"):
                state.nacked_version = state.sent_version
                self.cache.record_nack(
                    self.node_id, type_url, state.sent_version or "", request.error_detail.message
                )
            else:
                self.cache.record_ack(
                    self.node_id, type_url, request.version_info, set(self._types)
                )
        state.names = frozenset(request.resource_names)
        state.wildcard = type_url in WILDCARD_TYPES and not state.names
        response = self._respond(type_url)
        return [response] if response is not None else []

    def on_snapshot(self) -> list[discovery_pb2.DiscoveryResponse]:
        responses = [self._respond(t) for t in _ordered(self._types)]
        return [r for r in responses if r is not None]

    def _respond(self, type_url: str) -> discovery_pb2.DiscoveryResponse | None:
        snapshot = self._snapshot()
        state = self._types[type_url]
        if snapshot is None:
            return None
        typed = snapshot.of(type_url)
        names_changed = state.sent_names is not None and state.names != state.sent_names
        if typed.version == state.sent_version and not names_changed:
            return None
        if typed.version == state.nacked_version and not names_changed:
            return None
        selected = (
            typed.resources.values()
            if state.wildcard
            else [typed.resources[n] for n in sorted(state.names) if n in typed.resources]
        )
        state.sent_version, state.sent_names, state.nonce = typed.version, state.names, _nonce()
        self._expire_dependents(type_url)
        return discovery_pb2.DiscoveryResponse(
            version_info=typed.version,
            resources=list(selected),
            type_url=type_url,
            nonce=state.nonce,
        )

    def _expire_dependents(self, type_url: str) -> None:
        """A cluster (listener) Envoy receives anew warms until it gets its endpoints (routes)
        again, even when they did not change; without a resend it waits out its 15 s initial
        fetch timeout and holds back the listeners and routes behind it."""
        dependent = _DEPENDENT.get(type_url)
        if dependent is not None and dependent in self._types:
            self._types[dependent].sent_version = None

    def close(self) -> None:
        if self.node_id is not None:
            self.cache.disconnected(self.node_id)


_DEPENDENT: dict[str, str] = {CLUSTER: ENDPOINT, LISTENER: ROUTE}


@dataclass
class _DeltaType:
    subscribed: set[str] = field(default_factory=set)
    wildcard: bool = False
    known: dict[str, str] = field(default_factory=dict)
    """name -> version the client holds (as far as we know)."""
    in_flight: dict[str, str] = field(default_factory=dict)
    """nonce -> system version of responses not yet ACKed or NACKed."""
    nacked_version: str | None = None
    responded: bool = False
    """Envoy waits for a first response per type (even an empty one) before it is ready."""


class DeltaStream:
    """One DeltaAggregatedResources stream."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.node_id: str | None = None
        self.generation = 0
        self._types: dict[str, _DeltaType] = {}

    @property
    def group(self) -> str | None:
        return None if self.node_id is None else self.cache.group_of(self.node_id)

    def on_request(
        self, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        if self.node_id is None:
            if not request.node.id:
                raise ProtocolError("the first DeltaDiscoveryRequest must carry node.id")
            self.node_id = request.node.id
            self.cache.connected(self.node_id, MessageToDict(request.node.metadata))
        type_url = request.type_url
        first = type_url not in self._types
        state = self._types.setdefault(type_url, _DeltaType())
        if first:
            state.known = dict(request.initial_resource_versions)
            state.wildcard = type_url in WILDCARD_TYPES and not request.resource_names_subscribe
        subscribe_changed = bool(
            request.resource_names_subscribe or request.resource_names_unsubscribe
        )
        for name in request.resource_names_subscribe:
            if name == "*":
                state.wildcard = True
            else:
                state.subscribed.add(name)
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
            else:
                state.subscribed.discard(name)
                state.known.pop(name, None)
        if request.response_nonce:
            version = state.in_flight.pop(request.response_nonce, None)
            if version is not None:
                if request.HasField("error_detail"):
                    state.nacked_version = version
                    # What Envoy rejected it does not hold: forget it so a fix is resent.
                    state.known.clear()
                    self.cache.record_nack(
                        self.node_id, type_url, version, request.error_detail.message
                    )
                else:
                    self.cache.record_ack(self.node_id, type_url, version, set(self._types))
            if not subscribe_changed:
                return []
        response = self._respond(type_url, force=first or subscribe_changed)
        return [response] if response is not None else []

    def on_snapshot(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        responses = [self._respond(t, force=False) for t in _ordered(self._types)]
        return [r for r in responses if r is not None]

    def _respond(
        self, type_url: str, *, force: bool
    ) -> discovery_pb2.DeltaDiscoveryResponse | None:
        snapshot = None if self.node_id is None else self.cache.node_snapshot(self.node_id)
        if snapshot is None:
            return None
        state = self._types[type_url]
        typed = snapshot.of(type_url)
        if typed.version == state.nacked_version and not force:
            return None
        wanted = set(typed.resources) if state.wildcard else state.subscribed
        changed = [
            discovery_pb2.Resource(
                name=name, version=typed.resource_versions[name], resource=typed.resources[name]
            )
            for name in sorted(wanted)
            if name in typed.resources and state.known.get(name) != typed.resource_versions[name]
        ]
        removed = sorted(name for name in state.known if name not in typed.resources)
        if not changed and not removed and state.responded:
            return None
        state.responded = True
        for resource in changed:
            state.known[resource.name] = resource.version
        if type_url == CLUSTER and ENDPOINT in self._types:
            # Re-sent clusters warm until they get their load assignment again (see SotwStream).
            for resource in changed:
                self._types[ENDPOINT].known.pop(resource.name, None)
        for name in removed:
            state.known.pop(name, None)
        nonce = _nonce()
        state.in_flight[nonce] = typed.version
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=typed.version,
            resources=changed,
            removed_resources=removed,
            type_url=type_url,
            nonce=nonce,
        )

    def close(self) -> None:
        if self.node_id is not None:
            self.cache.disconnected(self.node_id)
