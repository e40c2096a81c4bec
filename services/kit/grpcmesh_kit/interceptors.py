"""Server layers and client interceptors. The kit fixes their order (see ``server_layers``).

Server, outermost first: tracing (OpenTelemetry, W3C context) -> request context (request id,
deadline) -> metrics -> error mapping. Metrics sit outside error mapping so they count the status
the caller really gets; request context sits inside tracing so log lines carry the span.
Client, outermost first: context propagation (request id, deadline) -> tracing
(opentelemetry-instrumentation-grpc's interceptors) -> metrics.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from grpcmesh_kit.context import REQUEST_ID_HEADER, RpcContext, current_rpc, new_request_id
from grpcmesh_kit.errors import InvalidArgument, ServiceError
from grpcmesh_kit.metrics import (
    GrpcType,
    MetricsEndpoint,
    RpcMetrics,
    go_code_name,
    split_method,
)
from grpcmesh_kit.tracing import MeshSampler

log = logging.getLogger(__name__)

Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]
Wrap = Callable[[Unary], Unary]
WrapStream = Callable[[Streaming], Streaming]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _rewrap(
    handler: Handler,
    unary: Wrap,
    stream: WrapStream,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """A copy of ``handler`` whose behaviour is wrapped; keeps arity and the serialisers
    (unless given a new ``request_deserializer``)."""
    des = request_deserializer or handler.request_deserializer
    ser = handler.response_serializer
    if handler.unary_unary:
        wrapped_unary = unary(cast(Unary, handler.unary_unary))
        return grpc.unary_unary_rpc_method_handler(wrapped_unary, des, ser)
    if handler.stream_unary:
        wrapped_unary = unary(cast(Unary, handler.stream_unary))
        return grpc.stream_unary_rpc_method_handler(wrapped_unary, des, ser)
    behaviour = cast(Streaming, handler.unary_stream or handler.stream_stream)
    # A streaming handler is either an async generator or a coroutine using context.write().
    wrapped: Any = (
        stream(behaviour)
        if inspect.isasyncgenfunction(behaviour)
        else unary(cast(Unary, behaviour))
    )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrapped, des, ser)
    return grpc.stream_stream_rpc_method_handler(wrapped, des, ser)


class Layer(Protocol):
    """One server-side concern, applied by wrapping a method's handler."""

    def wrap(self, handler: Handler, method: str) -> Handler: ...


class KitLayers:
    """The kit's server layers (outermost first), composed around a method's handler."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self._layers = tuple(layers)

    def wrap(self, handler: Handler, method: str) -> Handler:
        for layer in reversed(self._layers):
            handler = layer.wrap(handler, method)
        return handler


class _LayeredGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, layers: KitLayers) -> None:
        self._inner = inner
        self._layers = layers
        # method -> (the handler we were given, our wrapper); bounded by the service's methods.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._layers.wrap(handler, method))
        return cached[1]


class LayeredServer:
    """What a service's ``register(server)`` sees instead of the grpc.aio.Server: every
    handler it adds is wrapped in the kit's layers once, at registration.

    The layers could be one gRPC interceptor, but grpc.aio runs an async pipeline step per
    interceptor on every call; wrapping at registration made the kit tax about a third
    smaller (bench/kit_tax.py, docs/benchmarks.md). Everything else is delegated.
    """

    def __init__(self, server: grpc.aio.Server, layers: KitLayers) -> None:
        self._server = server
        self._layers = layers

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_LayeredGenericHandler(h, self._layers) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, Handler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self._layers.wrap(handler, f"/{service_name}/{name}")
                for name, handler in method_handlers.items()
            },
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


UNTRACED_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
"""Probes and reflection: noise in every trace view."""


def _rpc_attributes(full_method: str) -> dict[str, str]:
    service, method = split_method(full_method)
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


Address = Callable[[], tuple[str, int]]
"""(host, port) for the ``server.address`` and ``server.port`` span attributes, read when a
span that records starts (a server binds its port after its handlers are wrapped)."""


def _with_server(attributes: dict[str, Any], address: Address | None) -> dict[str, Any]:
    if address is None:
        return attributes
    host, port = address()
    return {**attributes, "server.address": host, "server.port": port}


def _finish_span(span: Span, code: str) -> None:
    span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[code].value[0])
    if code != "OK":
        span.set_status(Status(StatusCode.ERROR, code))


class TracingServerLayer:
    """A SERVER span per call, child of the caller's W3C ``traceparent`` (OpenTelemetry API,
    semantic-convention names and attributes).

    Written here rather than taken from opentelemetry-instrumentation-grpc: in the full kit that
    interceptor costs several times this layer's server CPU per call (bench/kit_tax.py,
    docs/benchmarks.md), and it only understands async-generator streaming handlers.

    The per-call path is kept short: the propagator runs only when the call carries one of its
    headers, the span is made current with one attach (no context-manager layers), and the
    status code is looked up only for a span that records (most do not: sampling).
    """

    def __init__(self, tracer_provider: TracerProvider, address: Address | None = None) -> None:
        self._tracer = tracer_provider.get_tracer("grpcmesh_kit")
        sampler = getattr(tracer_provider, "sampler", None)
        self._sampler = sampler if isinstance(sampler, MeshSampler) else None
        self._address = address

    def wrap(self, handler: Handler, method: str) -> Handler:
        service, _ = split_method(method)
        if service in UNTRACED_SERVICES:
            return handler
        tracer, sampler, attributes = self._tracer, self._sampler, _rpc_attributes(method)
        address = self._address
        span_name = method.lstrip("/")

        def begin(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[Span, object]:
            parent = _incoming_trace_context(incoming_metadata(context))
            span: Span | None = None
            if sampler is not None:  # the kit's own sampler: unsampled calls skip the SDK
                span, parent = sampler.decide(parent)
            if span is None:
                span = tracer.start_span(
                    span_name,
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes=_with_server(attributes, address),
                    record_exception=False,
                    set_status_on_exception=False,
                )
            return span, context_api.attach(trace.set_span_in_context(span))

        def end(
            span: Span,
            token: object,
            context: grpc.aio.ServicerContext[Any, Any],
            error: BaseException | None,
        ) -> None:
            if span.is_recording():
                _finish_span(span, _final_code(context, error))
                span.end()
            context_api.detach(cast(Any, token))

        def unary(behaviour: Unary) -> Unary:
            async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                span, token = begin(context)
                error: BaseException | None = None
                try:
                    return await behaviour(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(span, token, context, error)

            return call

        def stream(behaviour: Streaming) -> Streaming:
            async def call(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                span, token = begin(context)
                error: BaseException | None = None
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(span, token, context, error)

            return call

        return _rewrap(handler, unary, stream)


_NO_PARENT = Context()
_propagator_fields: tuple[TextMapPropagator | None, frozenset[str]] = (None, frozenset())


def _incoming_trace_context(metadata: Mapping[str, Any]) -> Context:
    """The caller's trace context from the global propagator (W3C ``traceparent`` by default);
    an empty context, so the span is a root, when the call carries none of its headers."""
    global _propagator_fields
    propagator = propagate.get_global_textmap()
    if _propagator_fields[0] is not propagator:  # computed once per propagator, not per call
        _propagator_fields = (propagator, frozenset(propagator.fields))
    if _propagator_fields[1].isdisjoint(metadata):
        return _NO_PARENT
    return propagate.extract(metadata)


def incoming_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, Any]:
    """The call's invocation metadata as a dict. Each layer that needs it converts it: sharing
    one conversion through a contextvar measured no cheaper (bench/kit_tax.py)."""
    return dict(context.invocation_metadata() or ())


class RequestContextLayer:
    """Sets the RPC's request id (from ``x-request-id`` or new) and deadline in a contextvar,
    and echoes the request id in trailing metadata."""

    def wrap(self, handler: Handler, method: str) -> Handler:
        def enter(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            request_id = str(incoming_metadata(context).get(REQUEST_ID_HEADER) or new_request_id())
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            current_rpc.set(RpcContext(request_id, method, deadline))
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            # One line per call at DEBUG, inside the span: ties the trace to the service's log.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("rpc %s", method)

        def unary(behaviour: Unary) -> Unary:
            async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                enter(context)
                return await behaviour(request, context)

            return call

        def stream(behaviour: Streaming) -> Streaming:
            async def call(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                enter(context)
                async for response in behaviour(request, context):
                    yield response

            return call

        return _rewrap(handler, unary, stream)


def _final_code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    code = context.code()
    if code is None and error is None:  # the common case first: nothing set, nothing raised
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpcio builds report the raw integer
        return grpc.StatusCode(_CODES_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN.value)).name
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


_CODES_BY_VALUE = {c.value[0]: c.value for c in grpc.StatusCode}


class MetricsServerLayer:
    """go-grpc-prometheus server metrics: started, handled{grpc_code}, messages, latency."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self._endpoint = endpoint
        self._metrics: RpcMetrics = endpoint.server_side

    def wrap(self, handler: Handler, method: str) -> Handler:
        m = self._metrics
        labels = self._endpoint.labels(
            GrpcType.of(handler.request_streaming, handler.response_streaming), method
        )
        # Children bound once per method: labels() lookups on every call add up.
        received, sent = m.msg_received.labels(**labels), m.msg_sent.labels(**labels)
        started, latency = m.started.labels(**labels), m.handling_seconds.labels(**labels)
        handled: dict[str, Any] = {}
        # Bound methods, looked up once: a unary call makes seven of these calls.
        started_inc, received_inc, sent_inc = started.inc, received.inc, sent.inc
        observe, clock = latency.observe, time.perf_counter

        def count_handled(code: str) -> None:
            inc = handled.get(code)
            if inc is None:
                inc = handled[code] = m.handled.labels(**labels, grpc_code=go_code_name(code)).inc
            inc()

        async def count_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                received_inc()
                yield request

        def begin(request: Any) -> tuple[float, Any]:
            started_inc()
            if handler.request_streaming:
                return clock(), count_requests(request)
            received_inc()
            return clock(), request

        def end(
            context: grpc.aio.ServicerContext[Any, Any], start: float, error: BaseException | None
        ) -> None:
            count_handled(_final_code(context, error))
            observe(clock() - start)

        def unary(behaviour: Unary) -> Unary:
            if handler.request_streaming or handler.response_streaming:
                return general(behaviour)

            async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started_inc()
                received_inc()
                start = clock()
                error: BaseException | None = None
                try:
                    response = await behaviour(request, context)
                    sent_inc()
                    return response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    count_handled(_final_code(context, error))
                    observe(clock() - start)

            return call

        def general(behaviour: Unary) -> Unary:
            async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                start, request = begin(request)
                error: BaseException | None = None
                try:
                    response = await behaviour(request, context)
                    if not handler.response_streaming:
                        sent_inc()
                    return response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(context, start, error)

            return call

        def stream(behaviour: Streaming) -> Streaming:
            async def call(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                start, request = begin(request)
                error: BaseException | None = None
                try:
                    async for response in behaviour(request, context):
                        sent_inc()
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    end(context, start, error)

            return call

        return _rewrap(handler, unary, stream)


class MalformedRequest:
    """What the kit's request deserializer yields for bytes that are not the request message
    (corrupt wire format, a string field that is not UTF-8, ...). grpc.aio would answer a
    deserializer exception with UNKNOWN and the exception's class name; the error layer turns
    this value into INVALID_ARGUMENT instead, inside the other layers, so it is traced, logged
    with the request id and counted like any other invalid request."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> InvalidArgument:
        return InvalidArgument("request", self.reason)


def tolerant_deserializer(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``decode``, returning a :class:`MalformedRequest` where it would raise."""

    def deserialize(raw: bytes) -> Any:
        try:
            return decode(raw)
        except Exception as exc:  # protobuf's DecodeError, or anything a custom decoder raises
            return MalformedRequest(_decode_reason(exc))

    return deserialize


def _decode_reason(exc: Exception) -> str:
    # protobuf says "Error parsing message with type 'pkg.Msg': <why>": keep the type and why,
    # never the exception's class.
    text = str(exc)
    message_type, _, why = text.partition("': ")
    message_type = message_type.rpartition("'")[2]
    if why and message_type:
        return f"is not a valid {message_type} message: {why}"
    return "is not a valid request message"


async def _checked_requests(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, MalformedRequest):
            raise request.error()
        yield request


class ErrorLayer:
    """Maps kit errors to statuses; anything unexpected becomes INTERNAL with no traceback
    for the caller (the traceback goes to the server log with the request id). A request that
    does not decode is INVALID_ARGUMENT (see :class:`MalformedRequest`)."""

    def wrap(self, handler: Handler, method: str) -> Handler:
        streaming_requests = handler.request_streaming

        async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
            # abort replaces trailing metadata, so the request id echo is re-attached here.
            rpc = current_rpc.get()
            echo = ((REQUEST_ID_HEADER, rpc.request_id),) if rpc else ()
            if isinstance(exc, ServiceError):
                status = rpc_status.to_status(status_for(exc))
                await context.abort(status.code, status.details, (*status.trailing_metadata, *echo))
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error", echo)

        def checked(request: Any) -> Any:
            if streaming_requests:
                return _checked_requests(request)
            if isinstance(request, MalformedRequest):
                raise request.error()
            return request

        def unary(behaviour: Unary) -> Unary:
            async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await behaviour(checked(request), context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await fail(context, exc)

            return call

        def stream(behaviour: Streaming) -> Streaming:
            async def call(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                try:
                    async for response in behaviour(checked(request), context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await fail(context, exc)

            return call

        decode = handler.request_deserializer
        return _rewrap(
            handler, unary, stream, None if decode is None else tolerant_deserializer(decode)
        )


def status_for(error: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status for a kit error; INVALID_ARGUMENT carries a BadRequest detail so
    clients can read the field without parsing the message."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if isinstance(error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.reason
                    )
                ]
            )
        )
        status.details.append(detail)
    assert status.code != code_pb2.OK
    return status


def server_layers(
    endpoint: MetricsEndpoint, tracer_provider: TracerProvider, address: Address | None = None
) -> KitLayers:
    """The kit's layers; ``address`` gives the server's (host, port) for its spans."""
    return KitLayers(
        [
            TracingServerLayer(tracer_provider, address),
            RequestContextLayer(),
            MetricsServerLayer(endpoint),
            ErrorLayer(),
        ]
    )


# --- client side -------------------------------------------------------------------------------


def _outgoing(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    """Adds the current request id and caps the timeout at the incoming call's deadline."""
    rpc = current_rpc.get()
    if rpc is None:
        return details
    metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
    if not metadata.get_all(REQUEST_ID_HEADER):
        metadata.add(REQUEST_ID_HEADER, rpc.request_id)
    timeout = details.timeout
    remaining = rpc.time_remaining()
    if remaining is not None:
        timeout = max(0.0, remaining) if timeout is None else min(timeout, max(0.0, remaining))
    return grpc.aio.ClientCallDetails(
        details.method, timeout, metadata, details.credentials, details.wait_for_ready
    )


class ContextClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """Propagates the request id and the remaining deadline to outgoing calls."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_outgoing(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_outgoing(client_call_details), request)


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class MetricsClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """go-grpc-prometheus client metrics (grpc_client_*)."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self._endpoint = endpoint
        self._metrics = endpoint.client_side

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        m = self._metrics
        labels = self._endpoint.labels(GrpcType.UNARY, _method_name(client_call_details))
        m.started.labels(**labels).inc()
        m.msg_sent.labels(**labels).inc()
        start = time.perf_counter()
        call = await continuation(client_call_details, request)
        code = await call.code()
        if code == grpc.StatusCode.OK:
            m.msg_received.labels(**labels).inc()
        m.handled.labels(**labels, grpc_code=go_code_name(code.name)).inc()
        m.handling_seconds.labels(**labels).observe(time.perf_counter() - start)
        return call

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        m = self._metrics
        labels = self._endpoint.labels(GrpcType.SERVER_STREAM, _method_name(client_call_details))
        m.started.labels(**labels).inc()
        m.msg_sent.labels(**labels).inc()
        start = time.perf_counter()
        call = await continuation(client_call_details, request)

        def done(code: str) -> None:
            m.handled.labels(**labels, grpc_code=go_code_name(code)).inc()
            m.handling_seconds.labels(**labels).observe(time.perf_counter() - start)

        received = m.msg_received.labels(**labels)
        return _observe_stream(call, lambda: received.inc(), done)


async def _observe_stream(
    call: AsyncIterator[Any], on_message: Callable[[], None], on_end: Callable[[str], None]
) -> AsyncIterator[Any]:
    """Yield a response stream's messages, then report its final status name once."""
    code = "OK"
    try:
        async for response in call:
            on_message()
            yield response
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        raise
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    finally:
        on_end(code)


class ClientTracing:
    """A CLIENT span per call, whose context travels as W3C ``traceparent`` metadata:
    opentelemetry-instrumentation-grpc's aio client interceptors, which cost no more client CPU
    per call than the kit's own did (bench/kit_tax.py, docs/benchmarks.md).

    Their spans are made to follow the RPC conventions the kit's server spans follow: the name
    without the path's leading ``/`` and, per channel (``for_target``), ``server.address`` (the
    service's name when a sidecar routes on it, else the dialled host) and ``server.port``.
    """

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self._provider = tracer_provider

    def for_target(self, host: str, port: int) -> list[grpc.aio.ClientInterceptor]:
        server: dict[str, str | int] = {"server.address": host, "server.port": port}

        def conventions(span: Span, request: Any) -> None:
            if span.is_recording():
                name = getattr(span, "name", None)
                if isinstance(name, str):
                    span.update_name(name.lstrip("/"))
                span.set_attributes(server)

        return list(
            aio_client_interceptors(  # type: ignore[no-untyped-call]
                tracer_provider=self._provider, request_hook=conventions
            )
        )


def client_interceptors(
    endpoint: MetricsEndpoint, tracer_provider: TracerProvider
) -> Sequence[grpc.aio.ClientInterceptor | ClientTracing]:
    """Outermost first; ``ClientTracing`` becomes its interceptors per channel."""
    return [
        ContextClientInterceptor(),
        ClientTracing(tracer_provider),
        MetricsClientInterceptor(endpoint),
    ]
