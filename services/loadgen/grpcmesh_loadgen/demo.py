"""``python -m grpcmesh_loadgen.demo`` (``make demo``): the reference shop on this machine.

Starts catalog, inventory, payments and then orders as local processes, places orders through
orders with the load generator, prints the summary and stops everything (also on Ctrl-C or
SIGTERM). Exit code: the load generator's (0 every call succeeded, 1 some failed, 2 could not
run), 130/143 when interrupted.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from grpcmesh_loadgen.cli import EXIT_CANNOT_RUN, EXIT_FAILED_CALLS
from grpcmesh_loadgen.localrun import LocalRun, RunningService, StartupError
from grpcmesh_loadgen.orders import LoadgenError, run_load
from grpcmesh_loadgen.reference import reference_services
from grpcmesh_loadgen.render import report_table

EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

app = typer.Typer(add_completion=False)


def services_table(services: Iterable[RunningService]) -> Table:
    table = Table(title="Local services", title_justify="left")
    for column in ("service", "pid", "gRPC", "metrics (HTTP)", "log"):
        table.add_column(column, overflow="fold")
    for s in services:
        table.add_row(s.name, str(s.pid), s.grpc_address, s.metrics_address, s.log_path.name)
    return table


@dataclass(frozen=True)
class DemoOptions:
    orders: int = 200
    rate: float = 50.0
    concurrency: int = 32
    decline_rate: float = 0.1
    startup_timeout_s: float = 30.0


def error(message: object) -> Text:
    # Text, not markup: messages carry log lines and addresses like [::1]:50051.
    return Text.assemble(("error: ", "bold red"), str(message))


async def run_demo(console: Console, workdir: Path, opts: DemoOptions) -> int:
    async with LocalRun(workdir, startup_timeout_s=opts.startup_timeout_s) as local:
        specs = reference_services(decline_rate=opts.decline_rate)
        console.print(f"starting {', '.join(s.name for s in specs)} ...")
        try:
            started = await local.start_all(specs)
        except StartupError as exc:
            console.print(error(exc))
            return EXIT_CANNOT_RUN
        console.print(services_table(started))
        console.print(f"logs, config and databases in {workdir}")
        target = local.services["orders"].grpc_address
        console.print(f"placing {opts.orders} orders at {opts.rate:g}/s on orders ({target}) ...")
        try:
            report = await run_load(target, opts.orders, opts.rate, concurrency=opts.concurrency)
        except LoadgenError as exc:
            console.print(error(exc))
            return EXIT_CANNOT_RUN
        console.print(report_table(report))
        console.print("stopping services ...")
        codes = await local.stop()
    stopped = ", ".join(f"{name} (exit {code})" for name, code in codes.items())
    console.print(f"all services stopped: {stopped}")
    return 0 if report.succeeded else EXIT_FAILED_CALLS


async def _main(workdir: Path, opts: DemoOptions) -> int:
    """Run the demo; on SIGINT or SIGTERM cancel it (every `async with` stops its processes)
    and return 128 + the signal number."""
    main_task = asyncio.current_task()
    assert main_task is not None
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        main_task.cancel()

    # Installed explicitly, also for SIGINT: a shell starts background jobs with SIGINT
    # ignored, and the demo must still stop cleanly when asked.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await run_demo(Console(), workdir, opts)
    except asyncio.CancelledError:
        if not received:
            raise
        return 128 + received[0]


@app.command()
def main(
    orders: Annotated[int, typer.Option(min=1, help="Orders to place.")] = 200,
    rate: Annotated[float, typer.Option(min=0.001, help="Orders per second.")] = 50.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Most orders in flight.")] = 32,
    decline_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of payments declined (orders CANCELLED)."),
    ] = 0.1,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep databases, config and logs here (default: a temporary dir)."),
    ] = None,
    startup_timeout: Annotated[
        float, typer.Option(help="Seconds for each service to serve.")
    ] = 30.0,
) -> None:
    """Start the reference services locally, place demo orders, print the summary, stop."""
    opts = DemoOptions(orders, rate, concurrency, decline_rate, startup_timeout)
    with tempfile.TemporaryDirectory(prefix="grpcmesh-demo-") as tmp:
        code = asyncio.run(_main(workdir or Path(tmp), opts))
    if code == EXIT_SIGINT:
        Console().print("interrupted: all services stopped")
    elif code == EXIT_SIGTERM:
        Console().print("terminated: all services stopped")
    raise typer.Exit(code)


if __name__ == "__main__":
    app(prog_name="python -m grpcmesh_loadgen.demo")
