"""``grpcmesh``: run the mesh locally and talk to it.

Exit codes: 0 done; 1 refused or failed (invalid resources, a failed demo call, a process that
would not start); 2 cannot run (no mesh running, control plane unreachable); 128+signal when
interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

try:
    import typer
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text
except ModuleNotFoundError as missing:  # a base install (a service image) has no CLI
    raise SystemExit(
        f"grpcmesh: {missing.name} is not installed; the CLI comes with an extra: "
        "pip install 'grpcmesh[local]' (local mode) or 'grpcmesh[operator]' (in a cluster)"
    ) from missing

from grpcmesh_control.local import credential
from grpcmesh_control.local.clients import AdminUnavailable, ApplyResult, ControlPlaneClient
from grpcmesh_control.local.credential import CredentialError
from grpcmesh_control.local.down import MeshNotRunning, MeshNotStopped, stop_mesh
from grpcmesh_control.local.gateway_tls import GatewayTlsFiles
from grpcmesh_control.local.launcher import (
    DEFAULT_RUN_DIR,
    MeshOptions,
    NotFollowed,
    read_state,
    run_mesh,
    wait_followed,
)
from grpcmesh_control.local.sources.descriptors import read_descriptor_sets
from grpcmesh_control.local.state import RunState
from grpcmesh_control.local.status import status_document
from grpcmesh_control.local.supervisor import SupervisorSettings
from grpcmesh_control.local.top import ServiceRed, TopError, red_from_state
from grpcmesh_control.mesh.errors import MeshError
from grpcmesh_control.mesh.translate.naming import DEFAULT_TRACE_SAMPLING

if TYPE_CHECKING:
    from grpcmesh_control.cli.cluster_status import ClusterTarget, Snapshot

__all__ = ["app"]

EXIT_FAILED = 1
EXIT_CANNOT_RUN = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="grpcmesh: a service mesh for Python gRPC services. Local mode runs it on this machine.",
)

StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Run-state directory of the local mesh.")
]


def _default_resources() -> Path:
    """manifests/examples of the checkout in the working directory, else the reference
    resources shipped in the package (a copy of manifests/examples)."""
    here = Path("manifests/examples")
    if here.is_dir():
        return here
    return Path(str(files("grpcmesh_control") / "examples"))


IngressTlsCert = Annotated[
    Path | None,
    typer.Option(
        "--ingress-tls-cert",
        help="PEM certificate chain (leaf first) the ingress serves TLS to outside clients "
        "with; read over SDS, re-read when it changes. Without it the ingress is plaintext.",
    ),
]
IngressTlsKey = Annotated[
    Path | None,
    typer.Option("--ingress-tls-key", help="PEM private key of --ingress-tls-cert."),
]
IngressClientCa = Annotated[
    Path | None,
    typer.Option(
        "--ingress-client-ca",
        help="PEM CA certificates: the ingress then requires a client certificate from them.",
    ),
]


def _ingress_tls(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> GatewayTlsFiles | None:
    """The ingress TLS options as files; ``typer.BadParameter`` for a partial set."""
    if cert is None and key is None and client_ca is None:
        return None
    if cert is None or key is None:
        raise typer.BadParameter(
            "--ingress-tls-cert and --ingress-tls-key go together "
            "(and --ingress-client-ca needs both)"
        )
    return GatewayTlsFiles(cert, key, client_ca)


Resources = Annotated[
    list[Path] | None,
    typer.Option(
        "--resources",
        help="A MeshService YAML file, or a folder of them; repeat to give several. "
        "[default: manifests/examples]",
    ),
]

Descriptors = Annotated[
    list[Path] | None,
    typer.Option(
        "--descriptors",
        help="A descriptor set (*.binpb) or a directory of them: your services' protos "
        "(retries, method checks, reflection). Repeatable; *.binpb beside the resources "
        "are read too.",
    ),
]

# Piped (a script, grep, a file), output is for programs as much as people: nothing wraps at a
# guessed width, tables have no box drawing, and there are no colour codes.
_PLAIN_WIDTH = 100_000


def _plain(stderr: bool = False) -> bool:
    stream = sys.stderr if stderr else sys.stdout
    return not stream.isatty()


def _console(stderr: bool = False) -> Console:
    if _plain(stderr):
        return Console(
            stderr=stderr, highlight=False, width=_PLAIN_WIDTH, no_color=True, soft_wrap=True
        )
    return Console(stderr=stderr, highlight=False)


def _table(title: str, **options: Any) -> Table:
    """A table titled ``title``: boxed on a terminal, plain columns when piped."""
    if _plain():
        options |= {"box": None, "pad_edge": False}
    return Table(title=title, title_justify="left", **options)


def _error(message: object) -> None:
    # Text, not markup: messages carry brackets (spec.versions[1], [::1]:50051). Soft wrap:
    # an error is one line per problem, whatever the terminal's width.
    _console(stderr=True).print(
        Text.assemble(("error: ", "bold red"), str(message)), soft_wrap=True
    )


def _fail(message: object, code: int = EXIT_FAILED) -> NoReturn:
    _error(message)
    raise typer.Exit(code)


def _running_state(state_dir: Path) -> RunState:
    state = read_state(state_dir.resolve())
    if state is None:
        _fail(f"no mesh running in {state_dir} (start one with `grpcmesh up`)", EXIT_CANNOT_RUN)
    return state


def _run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop``, and ``main`` winds down by itself."""

    async def runner() -> tuple[int, int | None]:
        stop = asyncio.Event()
        received: list[int] = []
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):

            def handler(signum: int = signum) -> None:
                received.append(signum)
                stop.set()

            loop.add_signal_handler(signum, handler)
        code = await main(stop)
        return code, (received[0] if received else None)

    code, signum = asyncio.run(runner())
    return 128 + signum if signum is not None and code == 0 else code


# --- up ----------------------------------------------------------------------------------


def _port(address: str) -> str:
    return address.rpartition(":")[2]


def _mesh_table(state: RunState) -> Group:
    """Where everything listens. Every address is on 127.0.0.1, so the table shows ports."""
    table = _table("grpcmesh local mesh: ports on 127.0.0.1")
    for column in ("", "replica", "gRPC", "sidecar in", "admin", "metrics", "pid"):
        table.add_column(column, no_wrap=True)
    table.add_row(
        "ingress",
        "",
        _port(state.ingress),
        "",
        _port(state.ingress_admin),
        "",
        str(state.ingress_pid or ""),
    )
    table.add_row(
        "control plane",
        "",
        f"{_port(state.control_plane_xds)} (xDS)",
        "",
        _port(state.control_plane_admin),
        "",
        str(state.control_plane_pid or ""),
    )
    for r in state.replicas:
        table.add_row(
            r.service,
            r.replica,
            _port(r.app),
            _port(r.sidecar_inbound),
            _port(r.sidecar_admin),
            _port(r.metrics),
            str(r.app_pid or ""),
        )
    if state.prometheus is not None:
        table.add_row(
            "prometheus", "", "", "", _port(state.prometheus), "", str(state.prometheus_pid or "")
        )
    where = Text(
        f"ingress (call the exposed services here): {state.ingress}\n"
        + (f"prometheus: http://{state.prometheus}\n" if state.prometheus else "")
        + f"logs: {state.run_dir}/<service>/<replica>/{{app,envoy}}.log, "
        f"{state.control_plane_log}"
    )
    return Group(table, where)


def _options(
    resources: list[Path] | None,
    state_dir: Path,
    startup_timeout: float,
    prometheus: bool = False,
    otlp_endpoint: str | None = None,
    trace_sampling: float = DEFAULT_TRACE_SAMPLING,
) -> MeshOptions:
    return MeshOptions(
        resources=tuple(resources or [_default_resources()]),
        run_dir=state_dir,
        supervisor=SupervisorSettings(startup_timeout_s=startup_timeout),
        prometheus=prometheus,
        otlp_endpoint=otlp_endpoint,
        trace_sampling=trace_sampling,
    )


def _paths(paths: tuple[Path, ...]) -> str:
    return ", ".join(str(p) for p in paths)


def _start_errors(exc: BaseException) -> str | None:
    """The message for an error that means "the mesh could not start", else None (a bug:
    the traceback is worth seeing)."""
    return str(exc) if isinstance(exc, MeshError | FileNotFoundError) else None


@app.command()
def up(
    state_dir: StateDir = DEFAULT_RUN_DIR,
    resources: Resources = None,
    startup_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds for every endpoint to become ready.")
    ] = 90.0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log readiness changes.")
    ] = False,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus",
            help="Also run Prometheus (on PATH) scraping the mesh, with the generated rules.",
        ),
    ] = False,
    otlp_endpoint: Annotated[
        str | None,
        typer.Option(
            "--otlp-endpoint",
            help="host:port of an OTLP/gRPC collector: Envoys and services send it spans.",
        ),
    ] = None,
    descriptors: Descriptors = None,
    trace_sampling: Annotated[
        float,
        typer.Option(
            "--trace-sampling",
            min=0.0,
            max=1.0,
            help="Share of new traces recorded (0 to 1), by every Envoy and service alike; "
            "a trace is followed whole wherever it was sampled.",
        ),
    ] = DEFAULT_TRACE_SAMPLING,
    ingress_tls_cert: IngressTlsCert = None,
    ingress_tls_key: IngressTlsKey = None,
    ingress_client_ca: IngressClientCa = None,
) -> None:
    """Start the mesh on this machine (foreground; Ctrl-C or SIGTERM stops everything)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=LOG_FORMAT,
    )
    console = _console()
    options = replace(
        _options(resources, state_dir, startup_timeout, prometheus, otlp_endpoint, trace_sampling),
        descriptors=tuple(descriptors or ()),
        ingress_tls=_ingress_tls(ingress_tls_cert, ingress_tls_key, ingress_client_ca),
    )

    def ready(state: RunState) -> None:
        console.print(_mesh_table(state))
        console.print(
            f"mesh ready; run state in {state.run_dir}. "
            "`grpcmesh status`, `grpcmesh demo`, Ctrl-C to stop."
        )

    async def main(stop: asyncio.Event) -> int:
        try:
            console.print(f"starting the mesh from {_paths(options.resources)} ...")
            await run_mesh(options, stop, on_ready=ready)
        except Exception as exc:
            message = _start_errors(exc)
            if message is None:
                raise
            _error(message)
            return EXIT_FAILED
        console.print("mesh stopped")
        return 0

    raise typer.Exit(_run_until_signal(main))


# --- down --------------------------------------------------------------------------------


@app.command()
def down(
    state_dir: StateDir = DEFAULT_RUN_DIR,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds for every process to stop.")
    ] = 30.0,
) -> None:
    """Stop the mesh `grpcmesh up` runs in the state directory, and wait until it has stopped."""
    try:
        state = stop_mesh(state_dir, timeout_s=timeout)
    except MeshNotRunning as exc:
        _fail(f"{exc} (nothing to stop)", EXIT_CANNOT_RUN)
    except MeshNotStopped as exc:
        _fail(exc)
    _console().print(f"mesh in {state.run_dir} stopped (launcher pid {state.launcher_pid})")


# --- status ------------------------------------------------------------------------------


async def _control_plane_status(admin: str) -> dict[str, Any] | None:
    async with ControlPlaneClient(admin, timeout_s=3.0) as client:
        try:
            return await client.status()
        except AdminUnavailable:
            return None


_NO_ENDPOINT = {
    "replica": "-",
    "address": "",
    "ready": False,
    "connected": False,
    "acked_version": None,
    "nack_error": None,
}


def _restarts(restarts: object) -> str:
    """app/sidecar restart counts of an endpoint, the count of a gateway, or nothing."""
    if isinstance(restarts, dict):
        return f"{restarts.get('app', 0)}/{restarts.get('sidecar', 0)}"
    return "" if restarts is None else str(restarts)


def _expires(certificate: dict[str, Any] | None) -> str:
    """A workload certificate's expiry, to the second ("-": it holds none, e.g. plaintext)."""
    if not certificate:
        return "-"
    return str(certificate["not_after"]).replace("T", " ").split(".")[0] + "Z"


def _status_table(doc: dict[str, Any]) -> Table:
    title = (
        f"ingress {doc['ingress']}   control plane {doc['control_plane']}"
        f"   config {doc['config_version'] or '(control plane unreachable)'}"
    )
    table = _table(title)
    columns = (
        "service",
        "replica",
        "gRPC",
        "ready",
        "restarts",
        "xDS",
        "ACKed version",
        "identity",
        "cert expires",
        "NACK",
    )
    for column in columns:
        table.add_column(column, overflow="fold")
    rows = [(s["name"], e) for s in doc["services"] for e in s["endpoints"]]
    # A declared service with no endpoint at all still gets a row (and is in problems).
    rows += [(s["name"], _NO_ENDPOINT) for s in doc["services"] if not s["endpoints"]]
    gateways = doc["gateways"] if "gateways" in doc else [doc["gateway"]]
    for gateway in gateways:
        rows.append(("(ingress)", {**gateway, "replica": "", "address": "", "ready": None}))
    for name, e in rows:
        table.add_row(
            name,
            e["replica"],
            e["address"],
            "" if e["ready"] is None else ("yes" if e["ready"] else "no"),
            _restarts(e.get("restarts")),
            "connected" if e["connected"] else "disconnected",
            e["acked_version"] or "-",
            e.get("identity") or "-",
            _expires(e.get("certificate")),
            Text(e["nack_error"] or "", style="red"),
        )
    return table


@app.command()
def status(
    state_dir: StateDir = DEFAULT_RUN_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="The documented JSON contract.")] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="The mesh in a Kubernetes cluster (kubeconfig), not the local one.",
        ),
    ] = False,
    context: Annotated[
        str | None, typer.Option(help="kubeconfig context (default: the current one).")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Only this namespace (default: every one)."),
    ] = None,
    operator_namespace: Annotated[
        str, typer.Option(help="Where the chart installed the operator.")
    ] = "grpcmesh-system",
    operator_service: Annotated[
        str, typer.Option(help="The operator's Service (<release>-control).")
    ] = "grpcmesh-control",
) -> None:
    """Where everything runs, and which config each proxy has ACKed."""
    if cluster or context is not None:
        # Imported here: the cluster objects it renders take seconds to import on a busy
        # machine, and every other command does without them.
        from grpcmesh_control.cli.cluster_status import ClusterTarget, cluster_status_document

        target = ClusterTarget(context, namespace, operator_namespace, operator_service)
        _print_status(cluster_status_document(target, _fetch_cluster(target)), as_json)
        return
    state = _running_state(state_dir)
    doc = status_document(state, asyncio.run(_control_plane_status(state.control_plane_admin)))
    _print_status(doc, as_json)


def _fetch_cluster(target: ClusterTarget) -> Snapshot:
    from grpcmesh_control.cli.cluster_status import ClusterStatusError, fetch

    try:
        return fetch(target)
    except ClusterStatusError as error:
        _fail(f"grpcmesh status --cluster: {error}", EXIT_CANNOT_RUN)


def _print_status(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        console = _console()
        console.print(_status_table(doc))
        if doc.get("prometheus"):
            console.print(f"prometheus: http://{doc['prometheus']}  (`grpcmesh top` for RED)")
        for problem in doc["problems"]:
            console.print(Text(f"problem: {problem}", style="yellow"))


# --- top -------------------------------------------------------------------------------


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1%}"


def _millis(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _top_table(source: str, rows: list[ServiceRed]) -> Table:
    table = _table(f"RED per service (server side), from {source}")
    for column in ("service", "req/s", "errors", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "service" else "right")
    for row in rows:
        table.add_row(
            row.service,
            f"{row.rate:.2f}",
            Text(_percent(row.error_ratio), style="red" if row.error_ratio else ""),
            _millis(row.p50),
            _millis(row.p99),
        )
    return table


@app.command()
def top(
    state_dir: StateDir = DEFAULT_RUN_DIR,
    interval: Annotated[
        float, typer.Option(min=0.2, help="Seconds between the two scrapes, or refreshes.")
    ] = 2.0,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
) -> None:
    """Live rate, server-fault ratio and p50/p99 per service: from the mesh's Prometheus
    (`up --prometheus`), else from the apps' /metrics scraped twice."""
    state = _running_state(state_dir)
    console = _console()

    async def once() -> Table:
        source, rows = await red_from_state(state, interval)
        return _top_table(source, rows)

    try:
        if not watch:
            console.print(asyncio.run(once()))
            return

        async def main(stop: asyncio.Event) -> int:
            with Live(console=console, auto_refresh=False) as live:
                while not stop.is_set():
                    live.update(await once(), refresh=True)
                    if state.prometheus is not None:  # the app path already waited
                        await _first(asyncio.sleep(interval), stop.wait())
            return 0

        raise typer.Exit(_run_until_signal(main))
    except TopError as exc:
        _fail(exc, EXIT_CANNOT_RUN)


# --- apply -------------------------------------------------------------------------------


Wait = Annotated[
    float,
    typer.Option(
        "--wait",
        help="Seconds to wait for new replicas to be ready and ACK their config (0: do not).",
    ),
]


@app.command()
def apply(
    file: Annotated[
        Path,
        typer.Option("--filename", "-f", exists=True, dir_okay=False, help="MeshService YAML."),
    ],
    descriptors: Descriptors = None,
    state_dir: StateDir = DEFAULT_RUN_DIR,
    wait: Wait = 90.0,
) -> None:
    """Validate FILE against the running mesh and make it live; refused as a whole on error.

    The descriptor sets (*.binpb) beside FILE and those given with --descriptors go with it:
    its services' protos, for retries, method checks and reflection at the ingress.

    Starts and stops the processes the change needs, and waits (--wait) until every replica it
    started is ready; prints what it started, stopped and reconfigured."""
    text = file.read_text()
    try:
        sets = read_descriptor_sets(file.parent, *(descriptors or ()))
    except OSError as exc:
        _fail(f"--descriptors: {exc.filename}: {exc.strerror}")
    done = f"applied {file}" + "".join(f"\nprotos from {name}" for name in sorted(sets))
    _change(state_dir, lambda client: client.apply(file.name, text, sets), done, wait)


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="The MeshService to remove.")],
    state_dir: StateDir = DEFAULT_RUN_DIR,
    wait: Wait = 90.0,
) -> None:
    """Remove MeshService NAME from the running mesh: its replicas are drained, then stopped.

    Refused (naming the caller) while another service still lists it in spec.backends."""
    _change(state_dir, lambda client: client.delete(name), f"deleted {name}", wait)


def _change(
    state_dir: Path,
    send: Callable[[ControlPlaneClient], Coroutine[Any, Any, ApplyResult]],
    done: str,
    wait: float,
) -> None:
    """Send a change with the mesh's credential; print ``done`` and what the launcher did."""
    state = _running_state(state_dir)
    result: ApplyResult = _with_client(state, send)
    if not result.ok:
        _fail(f"refused: {result.message}")
    _console().print(done)
    _report_followed(state, wait)


def _report_followed(state: RunState, wait: float) -> None:
    """What the launcher did about the change, once done (``wait_followed``)."""
    if wait <= 0:
        return
    try:
        done = asyncio.run(wait_followed(Path(state.run_dir), timeout_s=wait))
    except NotFollowed as exc:
        _fail(exc)
    console = _console()
    for verb, keys in (
        ("started", done.started),
        ("restarted", done.restarted),
        ("stopped", done.stopped),
        ("reconfigured", done.reconfigured),
    ):
        for key in keys:
            suffix = " (ready)" if verb in ("started", "restarted") else ""
            console.print(f"{verb} {key}{suffix}")


# --- demo --------------------------------------------------------------------------------


async def _run_demo(ingress: str, orders: int, rate: float, console: Console) -> int:
    # Imported here: the load generator (and its generated protos) only matter for the demo.
    from grpcmesh_loadgen import LoadgenError, run_load
    from grpcmesh_loadgen.render import report_table

    console.print(f"placing {orders} orders at {rate:g}/s through the ingress ({ingress}) ...")
    try:
        report = await run_load(ingress, orders, rate)
    except LoadgenError as exc:
        _error(exc)
        return EXIT_CANNOT_RUN
    console.print(report_table(report))
    return 0 if report.succeeded else EXIT_FAILED


async def _demo_up(
    options: MeshOptions, orders: int, rate: float, stop: asyncio.Event, console: Console
) -> int:
    """A fresh mesh: wait until it is ready and every proxy ACKed, run the demo, stop it."""
    ready = asyncio.Event()
    states: list[RunState] = []

    def on_ready(state: RunState) -> None:
        states.append(state)
        ready.set()

    async def demo() -> int:
        try:
            await _first(ready.wait(), stop.wait())
            if stop.is_set():
                return 0
            state = states[0]
            console.print(_mesh_table(state))
            # The mesh is ready once every proxy ACKed config holding every ready endpoint.
            console.print(f"every proxy ACKed its config ({len(state.replicas) + 1} proxies)")
            return await _first(_run_demo(state.ingress, orders, rate, console), stop.wait()) or 0
        finally:
            stop.set()  # the demo is over (or failed): stop the mesh

    code = 0
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(run_mesh(options, stop, on_ready=on_ready))
            demo_task = group.create_task(demo())
        code = demo_task.result()
    except* Exception as failed:
        message = _start_errors(failed.exceptions[0])
        if message is None:
            raise
        _error(message)
        code = EXIT_FAILED
    console.print("mesh stopped")
    return code


async def _first(main: Coroutine[Any, Any, Any], interrupt: Coroutine[Any, Any, Any]) -> Any:
    """``main``'s result, or None if ``interrupt`` finishes first (``main`` is cancelled)."""
    async with asyncio.TaskGroup() as group:
        main_task = group.create_task(main)
        interrupt_task = group.create_task(interrupt)
        done, _ = await asyncio.wait(
            {main_task, interrupt_task}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (main_task, interrupt_task):
            task.cancel()
    return main_task.result() if main_task in done and not main_task.cancelled() else None


@app.command()
def demo(
    orders: Annotated[int, typer.Option(min=1, help="Orders to place.")] = 200,
    rate: Annotated[float, typer.Option(min=0.001, help="Orders per second.")] = 25.0,
    start: Annotated[
        bool, typer.Option("--up", help="Start a fresh mesh for the demo and stop it after.")
    ] = False,
    state_dir: StateDir = DEFAULT_RUN_DIR,
    resources: Resources = None,
    startup_timeout: Annotated[float, typer.Option(min=1.0)] = 90.0,
) -> None:
    """Place demo orders through the ingress and print a summary (non-zero if a call failed)."""
    console = _console()
    if not start:
        state = _running_state(state_dir)
        raise typer.Exit(asyncio.run(_run_demo(state.ingress, orders, rate, console)))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = _options(resources, state_dir, startup_timeout)
    console.print(f"starting a fresh mesh from {_paths(options.resources)} ...")
    raise typer.Exit(_run_until_signal(lambda stop: _demo_up(options, orders, rate, stop, console)))


# --- ca ----------------------------------------------------------------------------------

ca_app = typer.Typer(no_args_is_help=True, help="The mesh's certificate authority (local mode).")
app.add_typer(ca_app, name="ca")


class RotateUntil(StrEnum):
    TRUST = "trust"
    SIGN = "sign"
    FINISH = "finish"


def _with_client(
    state: RunState, request: Callable[[ControlPlaneClient], Coroutine[Any, Any, Any]]
) -> Any:
    """``request`` on the running mesh's control plane, with its credential; exits 2 when the
    credential cannot be read or the control plane does not answer."""
    try:
        token = credential.read(Path(state.run_dir))
    except CredentialError as exc:
        _fail(exc, EXIT_CANNOT_RUN)

    async def send() -> Any:
        async with ControlPlaneClient(state.control_plane_admin, token=token) as client:
            return await request(client)

    try:
        return asyncio.run(send())
    except AdminUnavailable as exc:
        _fail(exc, EXIT_CANNOT_RUN)


@ca_app.command("rotate")
def ca_rotate(
    state_dir: StateDir = DEFAULT_RUN_DIR,
    until: Annotated[
        RotateUntil,
        typer.Option(
            "--until",
            help="Stop after this step: trust (both roots trusted), sign (the new root signs, "
            "every certificate re-issued) or finish (the old root dropped).",
        ),
    ] = RotateUntil.FINISH,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait in all for the nodes to ACK.")
    ] = 120.0,
) -> None:
    """Rotate the running mesh's root CA without a failed call.

    Steps, each taken only once every connected sidecar ACKed the one before: trust (a new
    root is made and sent to every sidecar beside the old one), sign (the new root signs and
    every certificate is re-issued), finish (the old root is deleted and dropped from the
    bundle). Run again to resume a rotation that stopped part way (--until, a timeout, a
    crash): each step's state is in the run directory."""
    from grpcmesh_control.local.mesh_ca import RotationPhase
    from grpcmesh_control.local.rotation import (
        RotationRefused,
        RotationTimeout,
        rotate_root,
    )

    console = _console()

    async def rotate(client: ControlPlaneClient) -> dict[str, Any]:
        return await rotate_root(
            client, until=RotationPhase(until.value), timeout_s=timeout, report=console.print
        )

    try:
        doc = _with_client(_running_state(state_dir), rotate)
    except (RotationRefused, RotationTimeout) as exc:
        _fail(exc)
    signer = doc["signer"]
    roots = ", ".join(r["serial"] for r in doc["roots"])
    console.print(
        f"phase {doc['phase'] or 'none (rotation complete)'}; signing root serial "
        f"{signer['serial']}; trusted root serial(s) {roots}"
    )


@ca_app.command("status")
def ca_status(state_dir: StateDir = DEFAULT_RUN_DIR) -> None:
    """The mesh root: the rotation phase, the signing and trusted roots, nodes not caught up
    (JSON)."""

    async def get(client: ControlPlaneClient) -> dict[str, Any]:
        return await client.rotation()

    print(json.dumps(_with_client(_running_state(state_dir), get), indent=2))


# --- control plane -----------------------------------------------------------------------


@app.command("control-plane")
def control_plane(
    state_dir: StateDir,
    xds_port: Annotated[int, typer.Option(min=0, max=65535, help="ADS (gRPC) port; 0: any.")],
    admin_port: Annotated[int, typer.Option(min=0, max=65535, help="Admin HTTP port; 0: any.")],
    host: Annotated[str, typer.Option(help="Address both listen on.")] = "127.0.0.1",
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the bound addresses here (JSON) once serving.")
    ] = None,
    secure_xds: Annotated[
        bool,
        typer.Option(
            help="Serve ADS only to Envoys and proxyless apps sending their node token (a JWT "
            "signed with the run directory's credential), each only its own config; over TLS "
            "with the mesh CA."
        ),
    ] = False,
    ingress_tls_cert: IngressTlsCert = None,
    ingress_tls_key: IngressTlsKey = None,
    ingress_client_ca: IngressClientCa = None,
) -> None:
    """Run the control plane on a run-state directory (what `grpcmesh up` starts)."""
    # Imported here: the xDS server and its protos are not needed by the other commands.
    from grpcmesh_control.local.controlplane import serve

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    gateway_tls = _ingress_tls(ingress_tls_cert, ingress_tls_key, ingress_client_ca)

    async def main(stop: asyncio.Event) -> int:
        code = 0
        try:
            await _first(
                serve(
                    state_dir,
                    xds_port,
                    admin_port,
                    host,
                    ready_file,
                    secure_xds=secure_xds,
                    gateway_tls=gateway_tls,
                ),
                stop.wait(),
            )
        except* OSError as failed:  # a port in use, say
            _error(f"cannot serve: {failed.exceptions[0]}")
            code = EXIT_FAILED
        except* ValueError as invalid:  # a GRPCMESH_* setting, say
            _error(f"cannot serve: {invalid.exceptions[0]}")
            code = EXIT_FAILED
        return code

    raise typer.Exit(_run_until_signal(main))


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@app.command("operator")
def operator_command(
    log_level: Annotated[LogLevel, typer.Option(help="Log level.")] = LogLevel.INFO,
) -> None:
    """Run the MeshService operator and its xDS control plane in a cluster (kubeconfig or
    in-cluster credentials, all namespaces; settings from GRPCMESH_* environment variables, see
    grpcmesh_control.cluster.controller.settings)."""
    # Imported here: kopf and the Kubernetes client are only needed in a cluster.
    from grpcmesh_control.cluster.controller.entry import main

    raise typer.Exit(main(log_level.value))
