"""The kit exports spans over OTLP/gRPC only when an endpoint is configured."""

from __future__ import annotations

import pytest

from grpcmesh_kit.tracing import create_tracer_provider, otlp_exporter


def test_no_endpoint_means_no_exporter_and_no_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert otlp_exporter(None) is None
    tracer = create_tracer_provider("svc", None).get_tracer("t")
    with tracer.start_as_current_span("root") as span:
        assert not span.is_recording()


@pytest.mark.parametrize("setting", ["kit", "otel-env"])
def test_an_endpoint_gives_an_otlp_grpc_exporter(
    setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if setting == "otel-env":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    exporter = otlp_exporter("127.0.0.1:4317" if setting == "kit" else None)
    assert type(exporter).__name__ == "OTLPSpanExporter"
    assert exporter is not None
    exporter.shutdown()
