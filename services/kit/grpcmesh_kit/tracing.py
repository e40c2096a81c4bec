"""OpenTelemetry setup. Context travels as W3C ``traceparent`` (the global default propagator),
which Envoy forwards untouched, so one trace spans client, sidecars and services."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    get_current_span,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

OTEL_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
DEFAULT_SAMPLING_RATIO = 0.01
"""The mesh-wide default: 1 % of the traces that start here (Envoy samples new traces at the same
ratio, so a trace starts sampled or not wherever it starts, and every later hop follows)."""


def otlp_exporter(endpoint: str | None) -> SpanExporter | None:
    """An OTLP/gRPC span exporter for ``endpoint`` (the kit's ``otlp_endpoint``), else for
    ``OTEL_EXPORTER_OTLP_ENDPOINT``; None when neither is set.

    ``host:port`` and ``http://`` mean plaintext (a local or in-cluster collector), ``https://``
    TLS. Imported only when configured, so services that export nothing don't load it.
    """
    endpoint = endpoint or os.environ.get(OTEL_ENDPOINT_ENV) or None
    if endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    insecure = not endpoint.startswith("https://")
    return OTLPSpanExporter(endpoint=endpoint, insecure=insecure)


_ROOT_SAMPLED = context_api.create_key("grpcmesh-root-sampled")
"""Set in a span's parent context when ``MeshSampler.start`` has already drawn "sampled"."""


_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)


class _Root(Sampler):
    """The root decision: by trace id at ``ratio`` (as Envoy's ``random_sampling``), unless the
    server layer's fast path already drew it."""

    def __init__(self, ratio: float) -> None:
        self._by_id: Sampler = TraceIdRatioBased(ratio) if ratio > 0 else ALWAYS_OFF

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if parent_context is not None and parent_context.get(_ROOT_SAMPLED):
            # The span's attributes are the result's: pass them on, as every SDK sampler does.
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._by_id.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"MeshRoot{{{self._by_id.get_description()}}}"


class MeshSampler(ParentBased):
    """The mesh's sampling: parent-based, so a call whose ``traceparent`` says sampled is
    recorded and one that says not sampled is not, whatever the ratio (a trace stays whole or
    is absent as a whole); a trace that starts here is sampled with probability ``ratio``.

    ``start`` is the same decision for the kit's server layer without the SDK's span path,
    which costs more server CPU per call than the rest of the layer (bench/kit_tax.py): most
    calls are not sampled and need only ids for logs and downstream calls.
    """

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"trace sampling ratio must be within [0, 1], got {ratio}")
        super().__init__(_Root(ratio))
        self.ratio = ratio

    def decide(self, parent: Context) -> tuple[Span | None, Context]:
        """For a call whose caller's trace context is ``parent`` (empty: none): the span to use
        when it is not to be recorded, else None and the context to start its recording span
        in with the SDK."""
        caller = get_current_span(parent).get_span_context() if parent else INVALID_SPAN_CONTEXT
        if caller.is_valid:
            if caller.trace_flags.sampled:
                return None, parent
            return UnsampledSpan(caller), parent
        if random.random() < self.ratio:
            return None, context_api.set_value(_ROOT_SAMPLED, True, parent)
        return UnsampledSpan(None), parent


class UnsampledSpan(NonRecordingSpan):
    """A span that is not recorded, whose ids are drawn when first asked for: a call that
    neither logs nor calls another service never needs them, and drawing them was a good part
    of the tracing layer's per-call cost. Its trace is the caller's (``caller``) or a new one.
    """

    def __init__(self, caller: SpanContext | None) -> None:
        self._caller = caller
        self._lazy: SpanContext | None = None

    def get_span_context(self) -> SpanContext:
        if self._lazy is None:
            caller = self._caller
            span_id = random.getrandbits(64) or 1
            self._lazy = (
                SpanContext(random.getrandbits(128) or 1, span_id, False, _UNSAMPLED)
                if caller is None
                else SpanContext(caller.trace_id, span_id, False, _UNSAMPLED, caller.trace_state)
            )
        return self._lazy

    def __repr__(self) -> str:
        return f"UnsampledSpan({self.get_span_context()!r})"


def mesh_sampler(ratio: float, *, exporting: bool = True) -> MeshSampler:
    """The kit's sampler at ``ratio``. Without an exporter no trace starts recorded: ids still
    reach logs and downstream calls, but nobody would collect the spans."""
    sampler = MeshSampler(ratio)
    return sampler if exporting else MeshSampler(0.0)


def create_tracer_provider(
    service_name: str,
    exporter: SpanExporter | None = None,
    sampling_ratio: float = DEFAULT_SAMPLING_RATIO,
    *,
    version: str | None = None,
) -> TracerProvider:
    """A provider tagged with the service name (and ``service.version`` when known), sampling
    as ``mesh_sampler`` says.

    Without an exporter, traces this service starts are not recorded (recording spans nobody
    collects was most of the kit's per-call overhead, bench/kit_tax.py); a caller's sampling
    decision is always honoured, so a trace sampled upstream stays whole.
    """
    attributes = {"service.name": service_name}
    if version is not None:
        attributes["service.version"] = version
    provider = TracerProvider(
        resource=Resource.create(attributes),
        sampler=mesh_sampler(sampling_ratio, exporting=exporter is not None),
    )
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
