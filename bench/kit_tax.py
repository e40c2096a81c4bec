"""Kit tax: unary throughput of one trivial handler, bare grpc.aio vs the full service kit.

The same trivial CatalogService.GetProduct servicer is served by several processes, one per mode:

- ``bare``: grpc.aio.server, no interceptors;
- ``kit``: ServiceApp with all its layers (tracing, request context, metrics, error mapping),
  health, reflection and /metrics;
- ``kit-none``: ServiceApp with no layer, and ``kit+LAYER``: with only that layer, so a layer's
  cost is its server CPU per call over ``kit-none``'s (``--no-layers`` leaves these out);
- ``kit-otel``: the kit with opentelemetry-instrumentation-grpc's aio server interceptor in
  place of its own tracing layer, and ``kit+otel`` that interceptor alone (``--no-otel``);
- client side (with ``kit-otel``): the load client against ``bare`` with no interceptor, with
  the kit's client tracing, and with the package's aio client interceptors as they come,
  reporting the client's CPU per call.

Every kit mode traces with the kit's sampler at the same ratio (``--sampling``, the mesh default
1 %) into a BatchSpanProcessor whose exporter drops the spans: sampled spans cost what they
cost in a mesh, minus the network. The client drives the modes closed loop at a fixed
concurrency in interleaved rounds (the order rotates each round) so drift on the machine hits
all alike. On a machine with 2+ cores the servers run pinned to CPU 1 and the client to CPU 0.

Reported per mode: calls/s (median of rounds) and server CPU per call. Throughput alone can hide
the tax when the Python client is the bottleneck; server CPU per call cannot.

    python bench/kit_tax.py [--rounds 6] [--seconds 4] [--concurrency 32] [--sampling 0.01]
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from rich.console import Console
from rich.table import Table
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

import grpcmesh_kit.app
from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2
from grpcmesh_kit import KitSettings, ServiceApp, create_tracer_provider
from grpcmesh_kit.interceptors import (
    Address,
    ClientTracing,
    ErrorLayer,
    KitLayers,
    Layer,
    MetricsServerLayer,
    RequestContextLayer,
    TracingServerLayer,
)
from grpcmesh_kit.metrics import MetricsEndpoint
from grpcmesh_kit.tracing import DEFAULT_SAMPLING_RATIO
from grpcmesh_loadgen.engine import Answer, drive
from grpcmesh_loadgen.procstat import cpu_seconds
from grpcmesh_loadgen.stats import OK, summarize_latencies

LAYERS = ("tracing", "context", "metrics", "errors")
"""The kit's server layers, outermost first, as ``server_layers`` composes them."""
MODES = ("bare", "kit")
LAYER_MODES = ("kit-none", *(f"kit+{layer}" for layer in LAYERS))
OTEL_MODES = ("kit-otel", "kit+otel")
GOAL = 0.85
OTEL_ALLOWANCE = 0.10
"""The package is used if it costs at most this much of the own layer's calls/s (issue 13)."""
SERVER_CPU = 1
CLIENT_CPU = 0

app = typer.Typer(add_completion=False)


class TrivialCatalog(catalog_pb2_grpc.CatalogServiceServicer):
    """Answers from memory: no I/O, so the serving stack's own cost dominates."""

    _product = catalog_pb2.Product(
        product_id="sku-0001",
        name="Espresso Beans 1kg",
        price=common_pb2.Money(currency_code="USD", amount_minor=2499),
    )

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: object
    ) -> catalog_pb2.GetProductResponse:
        return catalog_pb2.GetProductResponse(product=self._product)

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: object
    ) -> catalog_pb2.ListProductsResponse:
        return catalog_pb2.ListProductsResponse(products=[self._product])


def _register(server: grpc.aio.Server) -> None:
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(TrivialCatalog(), server)


def _pin(cpu: int) -> bool:
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {cpu})
    return True


async def _serve_bare(ports_file: Path) -> None:
    server = grpc.aio.server()
    _register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports_file.write_text(f'{{"grpc": {port}}}')
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1.0)


class DropSpans(SpanExporter):
    """Takes sampled spans and drops them: the cost of recording without a collector's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _layers_of(mode: str) -> tuple[str, ...]:
    """The kit's own layers a kit mode runs."""
    if mode == "kit":
        return LAYERS
    if mode == "kit-otel":
        return tuple(layer for layer in LAYERS if layer != "tracing")
    if mode.startswith("kit+") and mode[4:] in LAYERS:
        return (mode[4:],)
    return ()


async def _serve_kit(ports_file: Path, mode: str, sampling: float) -> None:
    settings = KitSettings(
        service_name="kit-tax",
        port=0,
        metrics_port=0,
        ports_file=ports_file,
        drain_seconds=0,
        log_level="WARNING",  # the lifecycle lines only; the kit logs nothing per call
        trace_sampling_ratio=sampling,
    )
    provider = create_tracer_provider(settings.service_name, DropSpans(), sampling)
    chosen = _layers_of(mode)

    def layers(
        endpoint: MetricsEndpoint, tracer_provider: object, address: Address | None = None
    ) -> KitLayers:
        # A measuring device, not a kit feature: the app composes only the chosen layers.
        make: dict[str, Layer] = {
            "tracing": TracingServerLayer(provider, address),
            "context": RequestContextLayer(),
            "metrics": MetricsServerLayer(endpoint),
            "errors": ErrorLayer(),
        }
        return KitLayers([make[layer] for layer in LAYERS if layer in chosen])

    grpcmesh_kit.app.server_layers = layers  # type: ignore[attr-defined]
    service = ServiceApp(settings, tracer_provider=provider)
    if mode in OTEL_MODES:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        service.add_interceptor(aio_server_interceptor(tracer_provider=provider))  # type: ignore[no-untyped-call]
    service.add_service(catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"], _register)
    try:
        await service.run()
    finally:
        provider.shutdown()


@dataclass(frozen=True)
class Round:
    mode: str
    calls: int
    failed: int
    elapsed_s: float
    server_cpu_s: float
    p50_s: float
    p99_s: float
    client_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed_s

    @property
    def cpu_us_per_call(self) -> float:
        return self.server_cpu_s / self.calls * 1e6

    @property
    def client_us_per_call(self) -> float:
        return self.client_cpu_s / self.calls * 1e6


@dataclass
class Server:
    mode: str
    process: subprocess.Popen[bytes]
    address: str


def _start_server(mode: str, workdir: Path, sampling: float) -> Server:
    ports_file = workdir / f"{mode}.ports.json"
    with (workdir / f"{mode}.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                mode,
                "--ports-file",
                str(ports_file),
                "--sampling",
                str(sampling),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    for attempt in Retrying(
        stop=stop_after_delay(30),
        wait=wait_fixed(0.1),
        retry=retry_if_exception_type((FileNotFoundError, ValueError)),
        reraise=True,
    ):
        with attempt:
            if process.poll() is not None:
                raise RuntimeError(f"{mode} server exited: {(workdir / f'{mode}.log').read_text()}")
            port = int(json.loads(ports_file.read_text())["grpc"])
    return Server(mode, process, f"127.0.0.1:{port}")


async def _measure(
    server: Server,
    calls: int,
    concurrency: int,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    mode: str | None = None,
) -> Round:
    request = catalog_pb2.GetProductRequest(product_id="sku-0001")
    channel = grpc.aio.insecure_channel(server.address, interceptors=list(interceptors) or None)
    async with channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)

        async def get(index: int) -> Answer:
            try:
                await stub.GetProduct(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return Answer(status=exc.code().name, detail=exc.details() or "")
            return Answer()

        cpu_before, client_before = cpu_seconds(server.process.pid), time.process_time()
        run = await drive(get, count=calls, rate=math.inf, concurrency=concurrency)
        cpu_after, client_after = cpu_seconds(server.process.pid), time.process_time()
    latency = summarize_latencies(r.latency_s for r in run.results)
    return Round(
        mode=mode or server.mode,
        client_cpu_s=client_after - client_before,
        calls=len(run.results),
        failed=sum(r.status != OK for r in run.results),
        elapsed_s=run.elapsed_s,
        server_cpu_s=cpu_after - cpu_before,
        p50_s=latency.p50,
        p99_s=latency.p99,
    )


def _table(rounds: list[Round]) -> Table:
    table = Table(title="rounds (closed loop)", title_justify="left")
    for column in ("#", "mode", "calls", "failed", "calls/s", "server CPU µs/call", "p50", "p99"):
        table.add_column(column, justify="right")
    for i, r in enumerate(rounds, 1):
        table.add_row(
            str(i),
            r.mode,
            str(r.calls),
            str(r.failed),
            f"{r.rate:,.0f}",
            f"{r.cpu_us_per_call:.0f}",
            f"{r.p50_s * 1000:.2f} ms",
            f"{r.p99_s * 1000:.2f} ms",
        )
    return table


@dataclass(frozen=True)
class Medians:
    rate: dict[str, float]
    cpu: dict[str, float]

    @classmethod
    def of(cls, rounds: list[Round]) -> Medians:
        modes = dict.fromkeys(r.mode for r in rounds)
        return cls(
            rate={m: statistics.median(r.rate for r in rounds if r.mode == m) for m in modes},
            cpu={
                m: statistics.median(r.cpu_us_per_call for r in rounds if r.mode == m)
                for m in modes
            },
        )

    def over(self, mode: str, base: str) -> float:
        """Server CPU µs per call that ``mode`` adds to ``base``."""
        return self.cpu[mode] - self.cpu[base]


def _summary(m: Medians) -> tuple[Table, float]:
    ratio = m.rate["kit"] / m.rate["bare"]
    efficiency = m.cpu["bare"] / m.cpu["kit"]
    table = Table(title="kit tax (medians of rounds)", title_justify="left")
    for column in ("", "bare", "kit", "kit/bare"):
        table.add_column(column, justify="right")
    table.add_row("calls/s", f"{m.rate['bare']:,.0f}", f"{m.rate['kit']:,.0f}", f"{ratio:.2f}")
    table.add_row(
        "server CPU µs/call",
        f"{m.cpu['bare']:.0f}",
        f"{m.cpu['kit']:.0f}",
        f"{efficiency:.2f} (calls per CPU-second)",
    )
    return table, ratio


def _layer_costs(m: Medians) -> Table:
    """Server CPU per call of each part of the kit: what a layer adds to the kit without one."""
    table = Table(title="per-layer cost (server CPU µs/call, medians)", title_justify="left")
    for column in ("part", "µs/call", "measured as"):
        table.add_column(column, justify="right")
    table.add_row(
        "server (health, reflection, options)",
        f"{m.over('kit-none', 'bare'):.1f}",
        "kit-none - bare",
    )
    for layer in LAYERS:
        table.add_row(
            f"{layer} layer", f"{m.over(f'kit+{layer}', 'kit-none'):.1f}", f"kit+{layer} - kit-none"
        )
    if "kit+otel" in m.cpu:
        table.add_row(
            "opentelemetry-instrumentation-grpc interceptor",
            f"{m.over('kit+otel', 'kit-none'):.1f}",
            "kit+otel - kit-none",
        )
    table.add_row("all layers together", f"{m.over('kit', 'kit-none'):.1f}", "kit - kit-none")
    table.add_row("whole kit", f"{m.over('kit', 'bare'):.1f}", "kit - bare")
    return table


CLIENT_MODES = ("client", "client+tracing", "client+otel")
"""The load client itself with no interceptor, with the kit's client tracing (the package's
aio client interceptors with the kit's conventions hook, as its channels get them), and with
the package's interceptors as they come, against ``bare``."""


def _client_interceptors(mode: str, sampling: float) -> list[grpc.aio.ClientInterceptor]:
    provider = create_tracer_provider("kit-tax-client", DropSpans(), sampling)
    if mode == "client+tracing":
        return ClientTracing(provider).for_target("127.0.0.1", 0)
    if mode == "client+otel":
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return list(aio_client_interceptors(tracer_provider=provider))  # type: ignore[no-untyped-call]
    return []


async def _client_rounds(
    console: Console, server: Server, rounds: int, calls: int, concurrency: int, sampling: float
) -> list[Round]:
    interceptors = {m: _client_interceptors(m, sampling) for m in CLIENT_MODES}
    for mode in CLIENT_MODES:
        await _measure(server, 1000, concurrency, interceptors[mode], mode)
    results: list[Round] = []
    for i in range(rounds):
        shift = i % len(CLIENT_MODES)
        for mode in CLIENT_MODES[shift:] + CLIENT_MODES[:shift]:
            results.append(await _measure(server, calls, concurrency, interceptors[mode], mode))
            console.print(
                f"  client round {len(results)}: {mode} {results[-1].rate:,.0f}/s, "
                f"{results[-1].client_us_per_call:.0f} µs client CPU/call"
            )
    return results


def _client_table(rounds: list[Round]) -> tuple[Table, str]:
    rate = {m: statistics.median(r.rate for r in rounds if r.mode == m) for m in CLIENT_MODES}
    cpu = {
        m: statistics.median(r.client_us_per_call for r in rounds if r.mode == m)
        for m in CLIENT_MODES
    }
    table = Table(title="client side, against bare (medians of rounds)", title_justify="left")
    for column in ("client", "calls/s", "client CPU µs/call", "tracing µs/call"):
        table.add_column(column, justify="right")
    for m in CLIENT_MODES:
        table.add_row(m, f"{rate[m]:,.0f}", f"{cpu[m]:.0f}", f"{cpu[m] - cpu['client']:.1f}")
    ratio = rate["client+otel"] / rate["client+tracing"]
    verdict = (
        f"client: the package's interceptors as they come run at {ratio:.2f} of the kit's client "
        f"tracing's calls/s ({cpu['client+otel'] - cpu['client+tracing']:+.0f} µs/call client "
        "CPU); the kit's is the package's with a conventions hook (docs/benchmarks.md)"
    )
    return table, verdict


def _otel_verdict(m: Medians) -> str:
    """The package against the own layer, in the full kit: issue 13's rule."""
    ratio = m.rate["kit-otel"] / m.rate["kit"]
    keep = ratio < 1 - OTEL_ALLOWANCE
    return (
        f"kit with opentelemetry-instrumentation-grpc: {m.rate['kit-otel']:,.0f} calls/s, "
        f"{ratio:.2f} of the own layer's {m.rate['kit']:,.0f} "
        f"({m.over('kit-otel', 'kit'):+.0f} µs/call server CPU): "
        + (
            f"costs more than {OTEL_ALLOWANCE:.0%}, keep the own layer"
            if keep
            else f"within {OTEL_ALLOWANCE:.0%}, use the package"
        )
    )


async def _bench(
    console: Console,
    modes: tuple[str, ...],
    rounds: int,
    seconds: float,
    concurrency: int,
    sampling: float,
) -> None:
    pinned = _pin(CLIENT_CPU)
    console.print(
        f"server pinned to CPU {SERVER_CPU}, client to CPU {CLIENT_CPU}"
        if pinned
        else "fewer than 2 CPUs: nothing pinned"
    )
    console.print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="kit-tax-") as tmp:
        servers = {m: _start_server(m, Path(tmp), sampling) for m in modes}
        try:
            # Warm up all (connections, code paths) and size rounds to ~`seconds` on bare.
            warm = {m: await _measure(servers[m], 2000, concurrency) for m in modes}
            calls = max(1000, int(warm["bare"].rate * seconds))
            console.print(
                f"{rounds} rounds per mode, {calls} calls each, concurrency {concurrency}, "
                f"trace sampling {sampling:g}"
            )
            results: list[Round] = []
            for i in range(rounds):
                shift = i % len(modes)
                for mode in modes[shift:] + modes[:shift]:
                    results.append(await _measure(servers[mode], calls, concurrency))
                    console.print(f"  round {len(results)}: {mode} {results[-1].rate:,.0f}/s")
            client = (
                await _client_rounds(
                    console, servers["bare"], rounds, calls // 2, concurrency, sampling
                )
                if "kit-otel" in modes
                else []
            )
        finally:
            for server in servers.values():
                server.process.terminate()
            for server in servers.values():
                try:
                    server.process.wait(10)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait()
    console.print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    console.print(_table(results))
    medians = Medians.of(results)
    summary, ratio = _summary(medians)
    console.print(summary)
    if "kit-none" in modes:
        console.print(_layer_costs(medians))
    verdict = "meets" if ratio >= GOAL else "MISSES"
    console.print(f"kit/bare throughput ratio {ratio:.2f} {verdict} the goal (>= {GOAL})")
    if "kit-otel" in modes:
        console.print(_otel_verdict(medians))
        client_table, client_verdict = _client_table(client)
        console.print(client_table)
        console.print(client_verdict)
    if any(r.failed for r in results):
        console.print("[red]some calls failed: the numbers above are not trustworthy[/red]")


@app.command()
def main(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per mode.")] = 6,
    seconds: Annotated[float, typer.Option(min=0.5, help="Target length of a round.")] = 4.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Calls in flight.")] = 32,
    sampling: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Trace sampling ratio of every kit mode.")
    ] = DEFAULT_SAMPLING_RATIO,
    layers: Annotated[bool, typer.Option(help="Measure each layer alone.")] = True,
    otel: Annotated[
        bool, typer.Option(help="Measure opentelemetry-instrumentation-grpc's interceptor.")
    ] = True,
    serve: Annotated[str | None, typer.Option(hidden=True)] = None,
    ports_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Measure the service kit's per-call overhead against a bare grpc.aio server."""
    modes = MODES + (LAYER_MODES if layers else ()) + (OTEL_MODES if otel else ())
    if serve is not None:  # a server process started by the benchmark itself
        assert ports_file is not None and serve in modes
        _pin(SERVER_CPU)
        asyncio.run(
            _serve_bare(ports_file) if serve == "bare" else _serve_kit(ports_file, serve, sampling)
        )
        return
    console = Console()
    console.print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    console.print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {sys.version.split()[0]}"
    )
    asyncio.run(_bench(console, modes, rounds, seconds, concurrency, sampling))


if __name__ == "__main__":
    app()
