"""Kit tax: unary throughput of one trivial handler, bare grpc.aio vs the full service kit.

The same trivial CatalogService.GetProduct servicer is served twice, each in its own process:
"bare" (grpc.aio.server, no interceptors) and "kit" (ServiceApp: tracing, request context,
metrics and error interceptors, health, reflection). The client drives both closed loop at a fixed
concurrency in interleaved rounds (bare, kit, bare, kit, ...) so drift on the machine hits both
alike. On a machine with 2+ cores the server runs pinned to CPU 1 and the client to CPU 0.

Reported per mode: calls/s (median of rounds) and server CPU per call. Throughput alone can hide
the tax when the Python client is the bottleneck; server CPU per call cannot.

    python bench/kit_tax.py [--rounds 6] [--seconds 4] [--concurrency 32]
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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.table import Table
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2
from grpcmesh_kit import KitSettings, ServiceApp
from grpcmesh_loadgen.engine import Answer, drive
from grpcmesh_loadgen.procstat import cpu_seconds
from grpcmesh_loadgen.stats import OK, summarize_latencies

MODES = ("bare", "kit")
GOAL = 0.85
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


async def _serve_kit(ports_file: Path) -> None:
    settings = KitSettings(
        service_name="kit-tax",
        port=0,
        metrics_port=0,
        ports_file=ports_file,
        drain_seconds=0,
        log_level="WARNING",  # the lifecycle lines only; the kit logs nothing per call
    )
    service = ServiceApp(settings)
    service.add_service(catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"], _register)
    await service.run()


@dataclass(frozen=True)
class Round:
    mode: str
    calls: int
    failed: int
    elapsed_s: float
    server_cpu_s: float
    p50_s: float
    p99_s: float

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed_s

    @property
    def cpu_us_per_call(self) -> float:
        return self.server_cpu_s / self.calls * 1e6


@dataclass
class Server:
    mode: str
    process: subprocess.Popen[bytes]
    address: str


def _start_server(mode: str, workdir: Path) -> Server:
    ports_file = workdir / f"{mode}.ports.json"
    with (workdir / f"{mode}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode, "--ports-file", str(ports_file)],
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


async def _measure(server: Server, calls: int, concurrency: int) -> Round:
    request = catalog_pb2.GetProductRequest(product_id="sku-0001")
    async with grpc.aio.insecure_channel(server.address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)

        async def get(index: int) -> Answer:
            try:
                await stub.GetProduct(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return Answer(status=exc.code().name, detail=exc.details() or "")
            return Answer()

        cpu_before = cpu_seconds(server.process.pid)
        run = await drive(get, count=calls, rate=math.inf, concurrency=concurrency)
        cpu_after = cpu_seconds(server.process.pid)
    latency = summarize_latencies(r.latency_s for r in run.results)
    return Round(
        mode=server.mode,
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


def _summary(rounds: list[Round]) -> tuple[Table, float]:
    rate = {m: statistics.median(r.rate for r in rounds if r.mode == m) for m in MODES}
    cpu = {m: statistics.median(r.cpu_us_per_call for r in rounds if r.mode == m) for m in MODES}
    ratio = rate["kit"] / rate["bare"]
    efficiency = cpu["bare"] / cpu["kit"]
    table = Table(title="kit tax (medians of rounds)", title_justify="left")
    for column in ("", "bare", "kit", "kit/bare"):
        table.add_column(column, justify="right")
    table.add_row("calls/s", f"{rate['bare']:,.0f}", f"{rate['kit']:,.0f}", f"{ratio:.2f}")
    table.add_row(
        "server CPU µs/call",
        f"{cpu['bare']:.0f}",
        f"{cpu['kit']:.0f}",
        f"{efficiency:.2f} (calls per CPU-second)",
    )
    return table, ratio


async def _bench(console: Console, rounds: int, seconds: float, concurrency: int) -> None:
    pinned = _pin(CLIENT_CPU)
    console.print(
        f"server pinned to CPU {SERVER_CPU}, client to CPU {CLIENT_CPU}"
        if pinned
        else "fewer than 2 CPUs: nothing pinned"
    )
    with tempfile.TemporaryDirectory(prefix="kit-tax-") as tmp:
        servers = {m: _start_server(m, Path(tmp)) for m in MODES}
        try:
            # Warm up both (connections, code paths) and size rounds to ~`seconds` on bare.
            warm = {m: await _measure(servers[m], 2000, concurrency) for m in MODES}
            calls = max(1000, int(warm["bare"].rate * seconds))
            console.print(
                f"{rounds} rounds per mode, {calls} calls each, concurrency {concurrency}"
            )
            results: list[Round] = []
            for i in range(rounds):
                for mode in MODES if i % 2 == 0 else MODES[::-1]:
                    results.append(await _measure(servers[mode], calls, concurrency))
                    console.print(f"  round {len(results)}: {mode} {results[-1].rate:,.0f}/s")
        finally:
            for server in servers.values():
                server.process.terminate()
            for server in servers.values():
                try:
                    server.process.wait(10)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait()
    console.print(_table(results))
    summary, ratio = _summary(results)
    console.print(summary)
    verdict = "meets" if ratio >= GOAL else "MISSES"
    console.print(f"kit/bare throughput ratio {ratio:.2f} {verdict} the goal (>= {GOAL})")
    if any(r.failed for r in results):
        console.print("[red]some calls failed: the numbers above are not trustworthy[/red]")


@app.command()
def main(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per mode.")] = 6,
    seconds: Annotated[float, typer.Option(min=0.5, help="Target length of a round.")] = 4.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Calls in flight.")] = 32,
    serve: Annotated[str | None, typer.Option(hidden=True)] = None,
    ports_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Measure the service kit's per-call overhead against a bare grpc.aio server."""
    if serve is not None:  # a server process started by the benchmark itself
        assert ports_file is not None and serve in MODES
        _pin(SERVER_CPU)
        asyncio.run(_serve_bare(ports_file) if serve == "bare" else _serve_kit(ports_file))
        return
    console = Console()
    console.print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    console.print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {sys.version.split()[0]}"
    )
    asyncio.run(_bench(console, rounds, seconds, concurrency))


if __name__ == "__main__":
    app()
