"""Trace sampling: a ratio for traces that start at a service, the caller's decision otherwise,
so traces are recorded whole or not at all (issue 14, the kit's side of mesh-wide sampling)."""

from __future__ import annotations

import math
from collections import defaultdict

import grpc
import pytest
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from grpcmesh_kit import KitSettings, create_tracer_provider
from grpcmesh_kit.tracing import MeshSampler
from tests.kit.conftest import echo_settings
from tests.kit.echo_service import build_app

CALLS = 400
SIGMAS = 5.0
"""A binomial count lands within 5 standard deviations of its mean but for ~1 run in 10^6."""

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"


def within(count: int, n: int, ratio: float) -> bool:
    mean = n * ratio
    return abs(count - mean) <= SIGMAS * math.sqrt(n * ratio * (1 - ratio))


async def call_many(address: str, n: int, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        for i in range(n):
            await stub.GetProduct(
                catalog_pb2.GetProductRequest(product_id=f"p{i}"), metadata=metadata, timeout=5
            )


def finished(provider: TracerProvider, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert provider.force_flush(10_000)
    return list(exporter.get_finished_spans())


async def test_traces_started_here_follow_the_ratio() -> None:
    exporter = InMemorySpanExporter()
    provider = create_tracer_provider("echo", exporter, sampling_ratio=0.25)
    app, _ = build_app(echo_settings(), tracer_provider=provider)
    async with app.running():
        await call_many(app.address, CALLS)
    spans = finished(provider, exporter)
    provider.shutdown()
    assert all(s.kind == SpanKind.SERVER and s.parent is None for s in spans)
    assert within(len(spans), CALLS, 0.25), len(spans)
    assert len({s.context.trace_id for s in spans}) == len(spans)


@pytest.mark.parametrize(("flags", "ratio", "recorded"), [("01", 0.0, CALLS), ("00", 1.0, 0)])
async def test_a_callers_decision_wins_over_the_ratio(
    flags: str, ratio: float, recorded: int
) -> None:
    exporter = InMemorySpanExporter()
    provider = create_tracer_provider("echo", exporter, sampling_ratio=ratio)
    app, _ = build_app(echo_settings(), tracer_provider=provider)
    traceparent = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-{flags}"
    async with app.running():
        await call_many(app.address, CALLS, (("traceparent", traceparent),))
    spans = finished(provider, exporter)
    provider.shutdown()
    assert len(spans) == recorded
    for span in spans:
        assert span.context.trace_id == int(TRACE_ID, 16)
        assert span.parent is not None and span.parent.span_id == int(CALLER_SPAN_ID, 16)


async def test_traces_across_a_hop_are_whole_or_absent() -> None:
    """Front and backend sample at the same ratio, each with its own provider: every trace the
    front recorded has the backend's span too, and the backend recorded no other."""
    ratio = 0.3
    exporter = InMemorySpanExporter()
    backend_provider = create_tracer_provider("backend", exporter, sampling_ratio=ratio)
    front_provider = create_tracer_provider("front", exporter, sampling_ratio=ratio)
    backend, _ = build_app(echo_settings(service_name="backend"), tracer_provider=backend_provider)
    async with backend.running():
        front, _ = build_app(
            echo_settings(
                service_name="front", downstream="backend", targets={"backend": backend.address}
            ),
            tracer_provider=front_provider,
        )
        async with front.running():
            await call_many(front.address, CALLS // 2)
    assert front_provider.force_flush(10_000)
    spans = finished(backend_provider, exporter)
    front_provider.shutdown()
    backend_provider.shutdown()

    by_trace: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for span in spans:
        assert span.resource is not None and span.context is not None
        service = str(span.resource.attributes["service.name"])
        by_trace[span.context.trace_id].append((service, span.kind.name))
    whole = [("backend", "SERVER"), ("front", "CLIENT"), ("front", "SERVER")]
    assert all(sorted(members) == whole for members in by_trace.values()), by_trace
    assert within(len(by_trace), CALLS // 2, ratio), len(by_trace)


async def test_without_an_exporter_no_trace_starts_recorded() -> None:
    provider = create_tracer_provider("echo", None, sampling_ratio=1.0)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root") as span:
        assert not span.is_recording()
        assert span.get_span_context().is_valid  # ids still reach logs and downstream calls


def test_the_ratio_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KitSettings().trace_sampling_ratio == 0.01
    monkeypatch.setenv("GRPCMESH_TRACE_SAMPLING_RATIO", "0.5")
    assert KitSettings().trace_sampling_ratio == 0.5
    monkeypatch.setenv("GRPCMESH_TRACE_SAMPLING_RATIO", "1.5")
    with pytest.raises(ValidationError, match="trace_sampling_ratio"):
        KitSettings()
    with pytest.raises(ValueError, match="within"):
        create_tracer_provider("echo", InMemorySpanExporter(), sampling_ratio=-0.1)


async def test_an_unsampled_calls_ids_reach_its_logs_and_downstream_calls() -> None:
    """Unsampled spans draw their ids lazily; the ids are stable once drawn and a caller's
    trace id is kept, so a log line and a downstream call of one call agree."""
    exporter = InMemorySpanExporter()
    provider = create_tracer_provider("echo", exporter, sampling_ratio=0.0)
    seen: list[tuple[int, int]] = []
    backend, _ = build_app(echo_settings(service_name="backend"), tracer_provider=provider)
    async with backend.running():
        front, _ = build_app(
            echo_settings(
                service_name="front", downstream="backend", targets={"backend": backend.address}
            ),
            tracer_provider=provider,
        )
        async with front.running():
            traceparent = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-00"
            await call_many(front.address, 3, (("traceparent", traceparent),))
    assert finished(provider, exporter) == []
    provider.shutdown()

    sampler = provider.sampler
    assert isinstance(sampler, MeshSampler)
    caller = propagate.extract({"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN_ID}-00"})
    for parent, trace_id in ((caller, int(TRACE_ID, 16)), (Context(), None)):
        span, _ = sampler.decide(parent)
        assert span is not None and not span.is_recording()
        first, again = span.get_span_context(), span.get_span_context()
        assert first.is_valid and not first.trace_flags.sampled
        assert (again.trace_id, again.span_id) == (first.trace_id, first.span_id)
        assert trace_id in (None, first.trace_id)
        seen.append((first.trace_id, first.span_id))
    assert seen[0][1] != int(CALLER_SPAN_ID, 16)
