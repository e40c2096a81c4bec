"""The ADS gRPC service: glues a stream's requests and its group's snapshot changes to the
protocol state in ``streams``. One task per stream direction, no fire-and-forget tasks.

With a ``NodeAuthenticator``, a stream is served only to a caller that proves who it is: its
call metadata is checked before the first request is read (none or a bad credential:
``UNAUTHENTICATED``), and every request's ``node.id`` must be one the proven identity may act
as (else ``PERMISSION_DENIED``, before anything of that node is sent). Each refusal is reported
to ``on_refused`` with its reason (``Refusal``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from grpcmesh_control.mesh.xds.cache import SnapshotCache
from grpcmesh_control.mesh.xds.streams import DeltaStream, ProtocolError, SotwStream

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
ReqIn = TypeVar("ReqIn", contravariant=True)
RespOut = TypeVar("RespOut", covariant=True)


class _Stream(Protocol[ReqIn, RespOut]):
    node_id: str | None
    generation: int

    @property
    def group(self) -> str | None: ...

    def on_request(self, request: ReqIn) -> Sequence[RespOut]: ...

    def on_snapshot(self) -> Sequence[RespOut]: ...

    def close(self) -> None: ...


class NodeAuthenticator(Protocol):
    """Who an ADS caller is, and which nodes it may ask for."""

    async def authenticate(self, metadata: Mapping[str, str]) -> str | None:
        """The identity the call ``metadata`` proves; None: no valid credential."""
        ...

    def permits(self, identity: str, node_id: str) -> bool:
        """Whether ``identity`` may be served ``node_id``'s configuration."""
        ...


_FIRST_REQUEST_GRACE = 1.0
"""Seconds an unauthenticated stream may take to send its first request before its refusal."""


class Refusal(StrEnum):
    """Why a stream was refused (the label of the control plane's refusal counter)."""

    UNAUTHENTICATED = "unauthenticated"
    """No credential, or one that does not verify."""
    WRONG_NODE = "wrong_node"
    """A valid credential, asking for a node id its identity may not act as."""


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        cache: SnapshotCache,
        on_push: Callable[[str, str], None] | None = None,
        *,
        authenticator: NodeAuthenticator | None = None,
        on_refused: Callable[[Refusal], None] | None = None,
    ) -> None:
        self.cache = cache
        self._on_push = on_push or (lambda node_id, type_url: None)
        self._authenticator = authenticator
        self._on_refused = on_refused or (lambda reason: None)

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        async for response in self._serve(SotwStream(self.cache), request_iterator, context):
            yield response

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        async for response in self._serve(DeltaStream(self.cache), request_iterator, context):
            yield response

    async def _serve(
        self,
        stream: _Stream[Req, Resp],
        requests: AsyncIterator[Req],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Resp]:
        identity = await self._authenticate(context, requests)
        next_request: asyncio.Future[Req] = asyncio.ensure_future(anext(requests))
        change: asyncio.Future[int] | None = None
        try:
            while True:
                waiting: set[asyncio.Future[Any]] = {next_request}
                if change is not None:
                    waiting.add(change)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if next_request in done:
                    try:
                        request = next_request.result()
                    except StopAsyncIteration:
                        return
                    await self._check_node(identity, request, context)
                    try:
                        responses = stream.on_request(request)
                    except ProtocolError as exc:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    for response in responses:
                        self._pushed(stream, response)
                        yield response
                    next_request = asyncio.ensure_future(anext(requests))
                    if change is None and stream.group is not None:
                        change = self._watch(stream)
                if change is not None and change in done:
                    stream.generation = change.result()
                    for response in stream.on_snapshot():
                        self._pushed(stream, response)
                        yield response
                    change = self._watch(stream)
        finally:
            for task in (next_request, change):
                if task is None:
                    continue
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await task
                elif not task.cancelled():
                    # A stream closed while a response was being sent leaves the read done with
                    # StopAsyncIteration; retrieve it, or asyncio logs "never retrieved".
                    task.exception()
            stream.close()

    async def _authenticate(
        self, context: grpc.aio.ServicerContext[Any, Any], requests: AsyncIterator[Any]
    ) -> str | None:
        if self._authenticator is None:
            return None
        metadata = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)  # binary (-bin) values carry no credential
        }
        identity = await self._authenticator.authenticate(metadata)
        if identity is None:
            self._on_refused(Refusal.UNAUTHENTICATED)
            # Take the client's first request before refusing: refused while that write was
            # still in flight, a grpcio client sometimes saw INTERNAL instead of the refusal
            # (1 in 10 e2e runs). Every xDS client sends one at once; bounded all the same.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_FIRST_REQUEST_GRACE):
                    await anext(requests)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the xDS server needs the node's credential ('authorization: Bearer <token>' "
                "call metadata); none was sent or it does not verify",
            )
        return identity

    async def _check_node(
        self, identity: str | None, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if self._authenticator is None or identity is None or not request.HasField("node"):
            return
        node_id = request.node.id
        if node_id and not self._authenticator.permits(identity, node_id):
            self._on_refused(Refusal.WRONG_NODE)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node.id {node_id!r}: the caller's credential is {identity!r}'s, which may "
                "not ask for this node's configuration",
            )

    def _watch(self, stream: _Stream[Any, Any]) -> asyncio.Future[int]:
        # The node's view: its group's snapshot and its own secrets (certificates).
        assert stream.node_id is not None
        waiter: Awaitable[int] = self.cache.wait_for_node_change(stream.node_id, stream.generation)
        return asyncio.ensure_future(waiter)

    def _pushed(self, stream: _Stream[Any, Any], response: Any) -> None:
        self._on_push(stream.node_id or "", response.type_url)
