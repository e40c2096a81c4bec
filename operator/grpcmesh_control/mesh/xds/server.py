"""The ADS gRPC service: glues a stream's requests and its group's snapshot changes to the
protocol state in ``streams``. One task per stream direction, no fire-and-forget tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(
        self, cache: SnapshotCache, on_push: Callable[[str, str], None] | None = None
    ) -> None:
        self.cache = cache
        self._on_push = on_push or (lambda node_id, type_url: None)

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

    def _watch(self, stream: _Stream[Any, Any]) -> asyncio.Future[int]:
        # The node's view: its group's snapshot and its own secrets (certificates).
        assert stream.node_id is not None
        waiter: Awaitable[int] = self.cache.wait_for_node_change(stream.node_id, stream.generation)
        return asyncio.ensure_future(waiter)

    def _pushed(self, stream: _Stream[Any, Any], response: Any) -> None:
        self._on_push(stream.node_id or "", response.type_url)
