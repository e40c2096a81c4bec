"""Tracing through the mesh: one PlaceOrder through the ingress is ONE trace, with spans from
the ingress Envoy, the sidecars and the orders, inventory and payments services, all sent over
OTLP/gRPC to an in-process collector; the same trace id is in those services' JSON logs and in
the Envoys' access logs.

Needs the current opentelemetry-proto, not the old copy inside xds-protos (which lacks the
collector's gRPC service): the Makefile's venv step reinstalls it after every sync.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

from grpcmesh_loadgen import run_load
from tests.e2e.harness import RESOURCES, Mesh, converged, eventually

pytestmark = pytest.mark.slow

APPS = ("orders", "inventory", "payments")
KIT_SCOPE = "grpcmesh_kit"
SPANS_TIMEOUT_S = 30.0


class Span:
    """What the tests read from one exported span."""

    def __init__(self, service: str, scope: str, span: Any) -> None:
        self.service, self.scope, self.name = service, scope, span.name
        self.trace_id = span.trace_id.hex()


class Collector:
    """An OTLP/gRPC trace receiver on 127.0.0.1:<free port>, in its own thread and event loop
    (the mesh fixture and the tests block; the receiver must keep answering meanwhile)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="otlp-collector", daemon=True)
        self.port = 0

    def _received(self, request: Any) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                service = attributes.get("service.name", "")
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(Span(service, scope_spans.scope.name, span))

    def _run(self) -> None:
        collector = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(self, request: Any, context: Any) -> Any:
                collector._received(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        async def serve() -> None:
            server = grpc.aio.server()
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
            self.port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await server.stop(1)

        self._loop.run_until_complete(serve())

    def __enter__(self) -> Collector:
        self._thread.start()
        assert self._ready.wait(10), "collector did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)


def _json_resources(directory: Path) -> Path:
    """The e2e resources with every service logging JSON at DEBUG (a line per call, carrying
    trace_id), under the same names."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in RESOURCES.glob("*.yaml"):
        doc = yaml.safe_load(source.read_text())
        env = [
            v
            for v in doc["spec"]["workload"].get("env", [])
            if v["name"] not in ("GRPCMESH_LOG_FORMAT", "GRPCMESH_LOG_LEVEL")
        ]
        env += [
            {"name": "GRPCMESH_LOG_FORMAT", "value": "json"},
            {"name": "GRPCMESH_LOG_LEVEL", "value": "DEBUG"},
        ]
        doc["spec"]["workload"]["env"] = env
        (directory / source.name).write_text(yaml.safe_dump(doc))
    return directory


@pytest.fixture
def traced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[Mesh, Collector]]:
    """The mesh tracing to a collector, every trace sampled unless the test's parameter gives
    the mesh's sampling ratio."""
    sampling = str(getattr(request, "param", "1"))
    # The kit's batch processor exports every 5 s by default; a test need not wait that long.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    resources = _json_resources(tmp_path / "resources-json")
    with Collector() as collector:
        mesh = Mesh(
            tmp_path / "run",
            resources=resources,
            up_args=(
                "--otlp-endpoint",
                f"127.0.0.1:{collector.port}",
                "--trace-sampling",
                sampling,
            ),
        )
        mesh.start()
        try:
            yield mesh, collector
        finally:
            assert mesh.stop() == 143, mesh.log.read_text()[-3000:]


def _logged_trace_ids(path: Path) -> set[str]:
    ids = set()
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("trace_id"):
            ids.add(str(record["trace_id"]))
    return ids


async def test_one_order_is_one_trace_across_ingress_sidecars_and_services(
    traced: tuple[Mesh, Collector],
) -> None:
    mesh, collector = traced

    async def ready() -> bool:
        return converged(await asyncio.to_thread(mesh.status))

    await eventually(ready, timeout=30, what="every proxy ACKs its snapshot")
    report = await run_load(mesh.state.ingress, orders=1, rate=1.0, seed=7)
    assert report.succeeded, report.error_samples

    async def whole_trace() -> tuple[str, dict[str, set[str]]] | None:
        spans = collector.snapshot()
        ingress = {s.trace_id for s in spans if s.service == "ingress"}
        if len(ingress) != 1:
            return None
        [trace_id] = ingress
        by_service: dict[str, set[str]] = defaultdict(set)
        for s in spans:
            if s.trace_id == trace_id:
                by_service[s.service].add(s.scope)
        # Each app's own spans and its sidecar's (Envoy reports under the app's service name;
        # it flushes every 5 s, so these come last).
        whole = all(
            KIT_SCOPE in by_service.get(app, set()) and by_service[app] - {KIT_SCOPE}
            for app in APPS
        )
        return (trace_id, dict(by_service)) if whole else None

    trace_id, _ = await eventually(
        whole_trace, timeout=SPANS_TIMEOUT_S, what="one trace with ingress and every service"
    )
    # Nothing of the order landed in another trace.
    stray = [
        (s.service, s.name, s.trace_id)
        for s in collector.snapshot()
        if "PlaceOrder" in s.name and s.trace_id != trace_id
    ]
    assert stray == []

    for app in APPS:
        logs = [Path(r.app_log) for r in mesh.state.replicas if r.service == app]
        assert any(trace_id in _logged_trace_ids(path) for path in logs), f"{app}: no log line"
    ingress_log = Path(mesh.state.ingress_log).read_text(errors="replace")
    access = [json.loads(line) for line in ingress_log.splitlines() if line.startswith("{")]
    assert any(
        a.get("trace_id") == trace_id
        and trace_id in (a.get("traceparent") or "")
        and a["request_id"]
        for a in access
    ), access[-3:]


SAMPLED_ORDERS = 60
SAMPLING = 0.5


@pytest.mark.parametrize("traced", [str(SAMPLING)], indirect=True)
async def test_the_mesh_samples_whole_traces_at_its_ratio(traced: tuple[Mesh, Collector]) -> None:
    """One ratio for Envoy and the kit: the ingress samples about that share of the orders,
    and each trace it sampled is whole (every service's spans and its sidecar's) while no
    service records a span of a trace the ingress did not sample."""
    mesh, collector = traced

    async def ready() -> bool:
        return converged(await asyncio.to_thread(mesh.status))

    await eventually(ready, timeout=30, what="every proxy ACKs its snapshot")
    report = await run_load(mesh.state.ingress, orders=SAMPLED_ORDERS, rate=20.0, seed=11)
    assert report.succeeded, report.error_samples

    def by_trace() -> dict[str, dict[str, set[str]]]:
        traces: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for s in collector.snapshot():
            traces[s.trace_id][s.service].add(s.scope)
        return traces

    def whole(services: dict[str, set[str]]) -> bool:
        return all(
            KIT_SCOPE in services.get(app, set()) and services[app] - {KIT_SCOPE} for app in APPS
        )

    async def all_whole() -> dict[str, dict[str, set[str]]] | None:
        # Every trace anyone recorded was sampled at the ingress and holds every service's
        # spans: none started at a sidecar or a service, none lost a hop. (Envoys flush every
        # 5 s, so a sampled trace may be partial for a while.)
        traces = by_trace()
        ok = traces and all("ingress" in v and whole(v) for v in traces.values())
        return traces if ok else None

    try:
        sampled = await eventually(
            all_whole, timeout=SPANS_TIMEOUT_S, what="every recorded trace sampled and whole"
        )
    except AssertionError:
        partial = {t: dict(v) for t, v in by_trace().items() if not whole(v) or "ingress" not in v}
        raise AssertionError(f"traces not whole or not started at the ingress: {partial}") from None
    sigma = math.sqrt(SAMPLED_ORDERS * SAMPLING * (1 - SAMPLING))
    assert abs(len(sampled) - SAMPLED_ORDERS * SAMPLING) <= 5 * sigma, len(sampled)
