"""OpenTelemetry setup. Context travels as W3C ``traceparent`` (the global default propagator),
which Envoy forwards untouched, so one trace spans client, sidecars and services."""

from __future__ import annotations

import os

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

OTEL_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


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


def create_tracer_provider(
    service_name: str, exporter: SpanExporter | None = None, *, version: str | None = None
) -> TracerProvider:
    """A provider tagged with the service name (and ``service.version`` when known).

    Without an exporter, traces this service starts are not recorded: their ids still reach
    logs and downstream calls, but recording spans nobody collects was most of the kit's
    per-call overhead (bench/kit_tax.py). A caller's sampling decision is always honoured
    (ParentBased), so a trace sampled upstream stays whole.
    """
    root = ALWAYS_ON if exporter is not None else ALWAYS_OFF
    attributes = {"service.name": service_name}
    if version is not None:
        attributes["service.version"] = version
    provider = TracerProvider(resource=Resource.create(attributes), sampler=ParentBased(root))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
