"""PlaceOrder throughput per core: the reference shop as local processes, saturated closed loop.

Starts catalog, inventory, payments and orders (local mode's process launcher, without
sidecars: ``tests/processes.py``), warms up, sizes the measured run to about ``--seconds`` from
the warm-up rate, then keeps ``--concurrency`` orders in flight. CPU time of the four service
processes comes from /proc, so "per core" means orders per CPU-second the services actually
used, whatever the load generator (same machine) took.

    python -m bench.place_order [--seconds 30] [--concurrency 16]
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from grpcmesh_loadgen import LoadReport, run_load
from grpcmesh_loadgen.orders import PRODUCTS
from grpcmesh_loadgen.procstat import cpu_seconds
from grpcmesh_loadgen.render import report_table
from tests.processes import ServiceProcess, service_process

app = typer.Typer(add_completion=False)


def _cpu_table(
    used: dict[str, float], client_cpu_s: float, report: LoadReport
) -> tuple[Table, float]:
    total = sum(used.values())
    elapsed = report.elapsed_s
    table = Table(title="CPU during the measured run", title_justify="left")
    for column in ("process", "CPU s", "cores (CPU s / wall s)", "share of services"):
        table.add_column(column, justify="right")
    for name, cpu in used.items():
        table.add_row(name, f"{cpu:.2f}", f"{cpu / elapsed:.2f}", f"{cpu / total:.0%}")
    table.add_row("services total", f"{total:.2f}", f"{total / elapsed:.2f}", "100%")
    table.add_row("load generator", f"{client_cpu_s:.2f}", f"{client_cpu_s / elapsed:.2f}", "")
    return table, total


@asynccontextmanager
async def _shop(workdir: Path) -> AsyncIterator[dict[str, ServiceProcess]]:
    """catalog, inventory and payments, then orders calling them directly (no sidecars)."""
    env = {"GRPCMESH_LOG_FORMAT": "text"}
    stock = json.dumps(dict.fromkeys(PRODUCTS, 10_000_000))
    async with AsyncExitStack() as stack:
        shop = {
            name: await stack.enter_async_context(
                service_process(name, f"grpcmesh_{name}", workdir, env | extra)
            )
            for name, extra in (
                ("catalog", {}),
                ("inventory", {"GRPCMESH_SEED_STOCK": stock}),
                ("payments", {}),
            )
        }
        targets = json.dumps({name: s.address for name, s in shop.items()})
        shop["orders"] = await stack.enter_async_context(
            service_process(
                "orders", "grpcmesh_orders", workdir, env | {"GRPCMESH_TARGETS": targets}
            )
        )
        yield shop


async def _bench(console: Console, seconds: float, concurrency: int, warmup: int) -> int:
    with tempfile.TemporaryDirectory(prefix="place-order-bench-") as tmp:
        async with _shop(Path(tmp)) as shop:
            target = shop["orders"].address
            warm = await run_load(target, warmup, math.inf, concurrency=concurrency)
            if not warm.succeeded:
                console.print(report_table(warm))
                console.print("[red]warm-up failed; not measuring[/red]")
                return 1
            orders = max(warmup, int(warm.achieved_rate * seconds))
            console.print(
                f"warm-up {warmup} orders at {warm.achieved_rate:.0f}/s; "
                f"measuring {orders} orders, {concurrency} in flight"
            )
            pids = {name: s.pid for name, s in shop.items()}
            before = {n: cpu_seconds(p) for n, p in pids.items()}
            client_before = time.process_time()
            report = await run_load(target, orders, math.inf, concurrency=concurrency)
            client_cpu = time.process_time() - client_before
            used = {n: cpu_seconds(p) - before[n] for n, p in pids.items()}
    console.print(report_table(report))
    table, total = _cpu_table(used, client_cpu, report)
    console.print(table)
    console.print(
        f"PlaceOrder: {report.achieved_rate:.0f} orders/s using {total / report.elapsed_s:.2f} "
        f"cores of services = {report.ok / total:.0f} orders/s per core"
    )
    return 0 if report.succeeded else 1


@app.command()
def main(
    seconds: Annotated[float, typer.Option(min=1.0, help="Target length of the run.")] = 30.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Orders in flight.")] = 16,
    warmup: Annotated[int, typer.Option(min=1, help="Warm-up orders (not measured).")] = 300,
) -> None:
    """Measure saturation throughput of the reference PlaceOrder path, per core used."""
    console = Console()
    console.print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    console.print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {sys.version.split()[0]}"
    )
    raise typer.Exit(asyncio.run(_bench(console, seconds, concurrency, warmup)))


if __name__ == "__main__":
    app()
