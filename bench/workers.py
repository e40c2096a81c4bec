"""Services past one core: throughput of one kit app with ``workers: 2`` against ``workers: 1``,
the same client driving both, side by side.

Each mode is one app process (``python -m bench.workers --serve N``): the full service kit
(every layer, health, reflection, /metrics; with 2 workers the parent's summed /metrics) around
a trivial CatalogService.GetProduct that answers from memory, so the serving stack is the cost.
The client is h2load (C, nghttp2), closed loop: ``--clients`` connections with
``--streams`` calls in flight on each, as fast as the server answers, for ``--seconds``. A
Python client would be the bottleneck well before two Python workers are; h2load costs a
fraction of a core, and it shares the machine with the server (nothing is pinned: the two
workers need both cores). Its CPU seconds are reported beside the servers', so the share of
the machine the client took is visible.

Rounds are interleaved (the order alternates) so drift on the shared machine hits both modes
alike. h2load counts HTTP 200 as success even when the gRPC status is not OK, so each server
is also called with a gRPC client before and after the rounds, and the run stops if a call
fails. h2load dials the app directly, so the kernel spreads its ``--clients`` connections over
the workers (behind a sidecar, the mesh caps calls per connection for the same effect).

Reported per mode: calls/s (median of rounds), the cores the app used (all its threads) and
those of its serving processes' main threads alone (Python, which holds the GIL; the rest is
gRPC's C-core threads), app CPU per call, the client's CPU share, and the ratio 2 workers /
1 worker against the goal (>= 1.5). One worker is bound by its main thread at one core; two
can only go further where the machine has a second core free for them.

    python -m bench.workers [--rounds 5] [--seconds 5] [--clients 16] [--streams 4]
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
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
import psutil
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from bench._mesh import load_average, print_header
from bench.kit_tax import TrivialCatalog
from bench.sidecar_overhead import _grpc_frame, _h2load
from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from grpcmesh_kit import KitSettings, ServiceApp
from grpcmesh_loadgen.procstat import cpu_seconds

METHOD = "/grpcmesh.shop.v1.CatalogService/GetProduct"
MODES = (1, 2)
GOAL = 1.5
START_TIMEOUT_S = 60.0

app = typer.Typer(add_completion=False)


def _serve(workers: int, ports_file: Path) -> None:
    settings = KitSettings(
        service_name="bench-workers",
        port=0,
        metrics_port=0,
        ports_file=ports_file,
        drain_seconds=0,
        log_level="WARNING",
        workers=workers,
    )
    service = ServiceApp(settings)
    service.add_service(
        catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
        lambda server: catalog_pb2_grpc.add_CatalogServiceServicer_to_server(
            TrivialCatalog(), server
        ),
    )
    asyncio.run(service.run())


@dataclass
class Server:
    workers: int
    process: subprocess.Popen[bytes]
    port: int

    def serving_pids(self) -> list[int]:
        """The processes that serve calls: the app itself, or its workers."""
        children = [c.pid for c in psutil.Process(self.process.pid).children()]
        return children or [self.process.pid]

    def cpu_s(self) -> tuple[float, float]:
        """The app's CPU so far (the process and its workers, every thread), and that of the
        serving processes' main threads alone (Python's share: the GIL holder)."""
        pids = [self.process.pid, *(c.pid for c in psutil.Process(self.process.pid).children())]
        main = sum(_thread_cpu_s(pid, pid) for pid in self.serving_pids())
        return sum(cpu_seconds(pid) for pid in pids), main


def _thread_cpu_s(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread (proc(5): fields 14 and 15 of its stat)."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _start(workers: int, workdir: Path) -> Server:
    ports_file = workdir / f"ports-{workers}.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.workers",
            "--serve",
            str(workers),
            "--ports-file",
            ports_file,
        ],
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (ports_file.exists() and ports_file.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the {workers}-worker server did not start")
        await asyncio.sleep(0.05)
    port = int(json.loads(ports_file.read_text())["grpc"])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the {workers}-worker server is not SERVING")
            await asyncio.sleep(0.1)
    return Server(workers, process, port)


async def _check_grpc(servers: list[Server]) -> None:
    """Real gRPC calls on fresh connections: h2load's 200 does not say the status was OK."""
    for server in servers:
        for _ in range(4):
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = catalog_pb2_grpc.CatalogServiceStub(channel)
                try:
                    await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="p"), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    raise SystemExit(
                        f"{server.workers} worker(s): gRPC call failed: {exc.code().name}"
                    ) from exc


@dataclass(frozen=True)
class Round:
    workers: int
    calls: int
    failed: int
    seconds: float
    server_cpu_s: float
    main_cpu_s: float
    """Of server_cpu_s, the serving processes' main threads (the rest: gRPC's C threads)."""
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _round(server: Server, body: Path, *, seconds: float, clients: int, streams: int) -> Round:
    command = [
        _h2load(),
        f"--duration={seconds:g}",
        f"--clients={clients}",
        f"--max-concurrent-streams={streams}",
        f"--data={body}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"http://127.0.0.1:{server.port}{METHOD}",
    ]
    (server_before, main_before), client_before = server.cpu_s(), _children_cpu_s()
    run = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 4 + 30)
    (server_after, main_after), client_after = server.cpu_s(), _children_cpu_s()
    server_used, main_used = server_after - server_before, main_after - main_before
    client_used = client_after - client_before
    if run.returncode != 0:
        raise RuntimeError(f"h2load failed ({run.returncode}): {run.stderr or run.stdout}")
    finished = re.search(r"finished in ([\d.]+)(m?s)", run.stdout)
    done = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", run.stdout
    )
    if finished is None or done is None:
        raise RuntimeError(f"unexpected h2load output:\n{run.stdout}")
    elapsed = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    return Round(
        workers=server.workers,
        calls=int(done[1]),
        failed=int(done[2]),
        seconds=elapsed,
        server_cpu_s=server_used,
        main_cpu_s=main_used,
        client_cpu_s=client_used,
    )


def _tables(rounds: list[Round], loads: list[str]) -> tuple[Table, Table, float]:
    detail = Table(title="rounds (h2load, closed loop)", title_justify="left")
    columns = ("round", "workers", "calls/s", "failed", "app cores", "main threads", "client")
    for column in (*columns, "load"):
        detail.add_column(column, justify="right")
    for i, (r, load) in enumerate(zip(rounds, loads, strict=True)):
        detail.add_row(
            str(i // len(MODES) + 1),
            str(r.workers),
            f"{r.rate:,.0f}",
            str(r.failed),
            f"{r.server_cpu_s / r.seconds:.2f}",
            f"{r.main_cpu_s / r.seconds:.2f}",
            f"{r.client_cpu_s / r.seconds:.2f}",
            load,
        )
    summary = Table(title="median of rounds", title_justify="left")
    for column in (
        "workers",
        "calls/s",
        "app cores",
        "main-thread cores",
        "app CPU ms / call",
        "client CPU share",
    ):
        summary.add_column(column, justify="right")
    rates: dict[int, float] = {}
    for workers in MODES:
        mine = [r for r in rounds if r.workers == workers]
        rates[workers] = statistics.median(r.rate for r in mine)
        client_share = statistics.median(
            r.client_cpu_s / (r.client_cpu_s + r.server_cpu_s) for r in mine
        )
        summary.add_row(
            str(workers),
            f"{rates[workers]:,.0f}",
            f"{statistics.median(r.server_cpu_s / r.seconds for r in mine):.2f}",
            f"{statistics.median(r.main_cpu_s / r.seconds for r in mine):.2f}",
            f"{statistics.median(1000 * r.server_cpu_s / r.calls for r in mine):.3f}",
            f"{client_share:.0%}",
        )
    return detail, summary, rates[2] / rates[1]


async def _bench(console: Console, rounds: int, seconds: float, clients: int, streams: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        workdir = Path(tmp)
        body = workdir / "request.bin"
        body.write_bytes(
            _grpc_frame(catalog_pb2.GetProductRequest(product_id="sku-0001").SerializeToString())
        )
        servers: list[Server] = []
        try:
            for workers in MODES:
                servers.append(await _start(workers, workdir))
            await _check_grpc(servers)
            results: list[Round] = []
            loads: list[str] = []
            for i in range(rounds):
                order = servers if i % 2 == 0 else servers[::-1]
                for server in order:
                    results.append(
                        await asyncio.to_thread(
                            _round,
                            server,
                            body,
                            seconds=seconds,
                            clients=clients,
                            streams=streams,
                        )
                    )
                    loads.append(load_average())
            await _check_grpc(servers)
        finally:
            for server in servers:
                server.process.send_signal(signal.SIGTERM)
            for server in servers:
                try:
                    server.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.process.kill()
    detail, summary, ratio = _tables(results, loads)
    console.print(detail)
    console.print(summary)
    verdict = "met" if ratio >= GOAL else "NOT met"
    console.print(
        f"2 workers / 1 worker: {ratio:.2f}x calls/s (goal >= {GOAL}x: {verdict}); client: "
        f"h2load on the same {psutil.cpu_count()}-CPU machine, unpinned, "
        f"{clients} connections x {streams} streams; load average after: {load_average()}"
    )


@app.command()
def main(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per mode.")] = 5,
    seconds: Annotated[float, typer.Option(min=1, help="Length of a round.")] = 5.0,
    clients: Annotated[int, typer.Option(min=1, help="h2load connections.")] = 16,
    streams: Annotated[int, typer.Option(min=1, help="Calls in flight per connection.")] = 4,
    serve: Annotated[int | None, typer.Option(hidden=True)] = None,
    ports_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Measure a kit app's throughput with 2 workers against 1, with the same h2load client."""
    if serve is not None:  # a server started by the benchmark itself (and its workers)
        assert ports_file is not None
        _serve(serve, ports_file)
        return
    console = Console()
    print_header(console, "bench.workers")
    asyncio.run(_bench(console, rounds, seconds, clients, streams))


if __name__ == "__main__":
    app()
