"""OpenTelemetry setup. Context travels as W3C ``traceparent`` (the global default propagator),
which Envoy forwards untouched, so one trace spans client, sidecars and services."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter


def create_tracer_provider(
    service_name: str, exporter: SpanExporter | None = None
) -> TracerProvider:
    """A provider tagged with the service name. Without an exporter spans are still created
    (their ids reach logs and downstream calls) but go nowhere."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
