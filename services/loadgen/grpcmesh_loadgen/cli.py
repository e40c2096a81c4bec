"""``grpcmesh-loadgen``: place orders on an OrderService at a fixed rate and summarise."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

try:
    import typer
    from rich.console import Console
    from rich.text import Text
except ModuleNotFoundError as missing:  # a base install (a service image) has no CLI
    raise SystemExit(
        f"grpcmesh-loadgen: {missing.name} is not installed; it comes with an extra: "
        "pip install 'grpcmesh[local]'"
    ) from missing

from grpcmesh_loadgen.orders import LoadgenError, run_load
from grpcmesh_loadgen.render import report_json, report_table

EXIT_FAILED_CALLS = 1
EXIT_CANNOT_RUN = 2

app = typer.Typer(add_completion=False, help=__doc__)


def _positive(value: float) -> float:
    if not value > 0:  # also rejects nan
        raise typer.BadParameter("must be > 0 (or inf for closed loop)")
    return value


@app.command()
def main(
    target: Annotated[str, typer.Argument(help="OrderService address, host:port.")],
    orders: Annotated[int, typer.Option(min=1, help="How many orders to place.")] = 100,
    rate: Annotated[
        float,
        typer.Option(
            callback=_positive,
            help="Orders per second (open loop). 'inf': closed loop, saturating --concurrency.",
        ),
    ] = 20.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Most calls in flight.")] = 64,
    deadline: Annotated[float, typer.Option(min=0.001, help="Per-call deadline, seconds.")] = 5.0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible orders.")] = None,
    authority: Annotated[
        str | None, typer.Option(help="Override :authority (e.g. for an ingress).")
    ] = None,
    connect_timeout: Annotated[float, typer.Option(min=0.0, help="Seconds to connect.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Place orders on the OrderService at TARGET and print a summary.

    Open loop: order i is sent at start + i/rate and timed from that moment, so a slow server
    shows up as latency instead of silently lowering the rate. Exit status: 0 every call
    succeeded (CANCELLED orders included), 1 some call failed, 2 the run could not start.
    """
    console = Console()
    try:
        report = asyncio.run(
            run_load(
                target,
                orders,
                rate,
                concurrency=concurrency,
                deadline_s=deadline,
                seed=seed,
                authority=authority,
                connect_timeout_s=connect_timeout,
            )
        )
    except LoadgenError as exc:
        console.print(Text.assemble(("error: ", "bold red"), str(exc)))  # no markup: [::1]
        raise typer.Exit(EXIT_CANNOT_RUN) from None
    if as_json:
        print(json.dumps(report_json(report), indent=2))
    else:
        console.print(report_table(report))
    raise typer.Exit(0 if report.succeeded else EXIT_FAILED_CALLS)
