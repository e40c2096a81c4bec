"""Sidecar overhead: unary latency and proxy cost of the two Envoys a mesh call crosses, against
a bare Envoy pair, with h2load (a C client) so the client's own cost does not hide the proxies'.

    direct: h2load -> server
    mesh:   h2load -> Envoy (client's sidecar, egress) -> Envoy (server's sidecar, inbound)
                   -> server
    mtls:   the same pair as ``mesh`` with mutual TLS between the sidecars (``translate.tls``;
            the workload certificates and roots given as static secrets, as SDS would)
    bare:   h2load -> Envoy -> Envoy -> server, each a router-only config written by hand
            (listener, HTTP connection manager, router, one static HTTP/2 cluster)

The mesh configs are what the mesh generates: two MeshServices (bench-client calls
bench-server) go through ``Registry.build`` and ``build_snapshot`` for each sidecar, and
``translate.static_bootstrap`` inlines the snapshot (RDS routes, EDS endpoints) so no control
plane runs during the measurement. Every Envoy runs with ``--concurrency 1``, as a sidecar does.
``mesh`` against ``bare`` is what our generated config costs beyond the two hops themselves;
``mtls`` against ``mesh`` is what mutual TLS costs on the sidecar-to-sidecar hop (connections
are long-lived HTTP/2, so this is the per-call encryption cost, not the handshake's).

The server is a trivial grpc.aio generic handler in its own process (1 KB in, 1 KB out, no
protobuf). h2load sends gRPC frames as HTTP/2 POSTs at a fixed rate (``--rps`` per connection),
and its per-request log gives the latency percentiles. h2load counts HTTP 200 as success even
when the gRPC status is not OK, so each path is also called with a gRPC client before and after
the rounds, and the run stops if any is not OK. Rounds are interleaved (the order rotates) so
drift on the shared machine hits every mode alike.

Reported: p50/p90/p99 per mode (median of rounds), deltas and ratios against direct and
mesh/bare, Envoy CPU seconds per 1000 calls (both proxies of a pair, from /proc) and RSS.

``--client grpc`` compares proxyless gRPC with the sidecar pair instead; h2load cannot speak
xDS, so the client is a grpc.aio process (open loop at the same fixed rate), the same one in
every mode:

    direct:    client -> server
    mesh:      client -> Envoy (client's sidecar) -> Envoy (server's sidecar) -> server
    proxyless: client (gRPC's xDS client: xds:///bench-server, from the control plane,
               which runs in the benchmark's process) -> Envoy (server's sidecar) -> server

Reported: the same percentiles and deltas, and CPU per call of the client process and of the
Envoys its calls cross (the client's includes gRPC's xDS client and its load balancing).

    python -m bench.sidecar_overhead [--rounds 6] [--seconds 5] [--rate 500] [--payload 1024]
    python -m bench.sidecar_overhead --client grpc [--rounds 6] [--seconds 5] [--rate 500]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from bench._mesh import (
    Envoy,
    free_port,
    load_average,
    print_header,
    rss_mb,
    running_envoys,
    stop_processes,
)
from grpcmesh_control.local.controlplane import (
    BoundAddresses,
    ControlPlane,
    ControlPlaneSettings,
)
from grpcmesh_control.mesh.ca import CertificateAuthority, trust_bundle
from grpcmesh_control.mesh.certificates import node_identity
from grpcmesh_control.mesh.model import Backend, Endpoint, GrpcSpec, MeshService
from grpcmesh_control.mesh.translate import (
    MeshTls,
    NodeId,
    ProxyNode,
    Registry,
    build_snapshot,
    static_bootstrap,
    workload_secrets,
)
from grpcmesh_control.mesh.translate.proxyless import grpc_bootstrap
from grpcmesh_loadgen.procstat import cpu_seconds

REPO = Path(__file__).resolve().parents[1]
GRPC_SERVICE = "grpcmesh.bench.Echo"
METHOD = f"/{GRPC_SERVICE}/Call"
CLIENT, SERVER = "bench-client", "bench-server"
MODES = ("direct", "mesh", "mtls", "bare")
PAIRS = {
    "mesh": ("bench-client-sidecar", "bench-server-sidecar"),
    "mtls": ("bench-client-mtls", "bench-server-mtls"),
    "bare": ("bare-client", "bare-server"),
}
CONNECTIONS = 4  # h2load clients; each sends rate/CONNECTIONS per second
# Goals from the mesh issue, with what Istio publishes for comparison.
GOAL_DP90_MS = 0.20
GOAL_VCPU_PER_1000 = 0.15
GOAL_RSS_MB = 40.0
ISTIO = "Istio 1.20: +0.23 ms p90; Istio 1.24: 0.20 vCPU per 1000 rps, 60 MB per proxy"

app = typer.Typer(add_completion=False)


async def _serve(ports_file: Path, payload: int) -> None:
    response = b"x" * payload

    async def call(request: bytes, context: object) -> bytes:
        return response

    # No serializers: the handler sees and returns raw bytes, so no protobuf cost.
    handler = grpc.method_handlers_generic_handler(
        GRPC_SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports_file.write_text(json.dumps({"grpc": port}))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1.0)


def _start_server(workdir: Path, payload: int) -> tuple[subprocess.Popen[bytes], int]:
    ports_file = workdir / "server.ports.json"
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.sidecar_overhead",
                "--serve",
                str(ports_file),
                "--payload",
                str(payload),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,  # for -m bench.sidecar_overhead
        )
    deadline = time.monotonic() + 30
    while not ports_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_processes([process])
            raise RuntimeError(f"server did not start: {(workdir / 'server.log').read_text()}")
        time.sleep(0.05)
    return process, int(json.loads(ports_file.read_text())["grpc"])


def _services(app_port: int, *, proxyless: bool = False) -> list[MeshService]:
    return [
        MeshService(
            CLIENT,
            "default",
            GrpcSpec(free_port(), ()),
            backends=(Backend(SERVER),),
            proxyless=proxyless,
        ),
        MeshService(SERVER, "default", GrpcSpec(app_port, (GRPC_SERVICE,))),
    ]


def _server_endpoints(server_inbound: int) -> dict[str, list[Endpoint]]:
    # Callers reach a replica on its sidecar's inbound port, as the launcher registers it.
    return {SERVER: [Endpoint("127.0.0.1", server_inbound, "v1")]}


def _sidecar_bootstraps(
    app_port: int, ca: CertificateAuthority | None = None, server_inbound: int | None = None
) -> tuple[dict[str, dict[str, Any]], int]:
    """Static bootstraps of both sidecars, from the mesh's own translation; and the client
    sidecar's egress port. With ``ca``: mTLS between them, each with a certificate for its
    identity from ``ca`` (what the control plane would send over SDS)."""
    server_inbound = server_inbound or free_port()
    registry = Registry.build(_services(app_port), _server_endpoints(server_inbound))
    client = ProxyNode(
        NodeId.sidecar(CLIENT, "0"),
        inbound_port=free_port(),
        egress_port=free_port(),
        bind_address="127.0.0.1",
    )
    server = ProxyNode(
        NodeId.sidecar(SERVER, "0"),
        inbound_port=server_inbound,
        egress_port=free_port(),
        bind_address="127.0.0.1",
    )
    tls = None if ca is None else MeshTls()
    configs = {}
    for node in (client, server):
        secrets: tuple[Any, ...] = ()
        if ca is not None:
            now = dt.datetime.now(dt.UTC)
            issued = ca.issue_workload(node_identity(str(node.id)), now)
            secrets = workload_secrets(
                issued.cert_chain_pem(), issued.key_pem(), trust_bundle([ca.root], now)
            )
        bootstrap = static_bootstrap(
            build_snapshot(registry, node, tls=tls), admin_port=free_port(), secrets=secrets
        )
        name = f"{node.id.name}-{'sidecar' if ca is None else 'mtls'}"
        configs[name] = json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)
    return configs, client.egress_port


_TYPE = "type.googleapis.com/envoy.extensions."
_HCM = _TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = _TYPE + "filters.http.router.v3.Router"
_HTTP_OPTIONS = _TYPE + "upstreams.http.v3.HttpProtocolOptions"


def _bare_bootstraps(app_port: int) -> tuple[dict[str, dict[str, Any]], int]:
    """Two router-only Envoys in a row, the least a proxy pair can be: what ``mesh`` is
    measured against. Returns the configs and the first one's listener port."""
    first, second = free_port(), free_port()

    def proxy(listen: int, upstream: int) -> dict[str, Any]:
        return {
            "admin": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}
            },
            "static_resources": {
                "listeners": [
                    {
                        "name": "in",
                        "address": {
                            "socket_address": {"address": "127.0.0.1", "port_value": listen}
                        },
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "name": "hcm",
                                        "typed_config": {
                                            "@type": _HCM,
                                            "stat_prefix": "in",
                                            "codec_type": "AUTO",
                                            "route_config": {
                                                "virtual_hosts": [
                                                    {
                                                        "name": "all",
                                                        "domains": ["*"],
                                                        "routes": [
                                                            {
                                                                "match": {"prefix": "/"},
                                                                "route": {
                                                                    "cluster": "next",
                                                                    "timeout": "0s",
                                                                },
                                                            }
                                                        ],
                                                    }
                                                ]
                                            },
                                            "http_filters": [
                                                {
                                                    "name": "router",
                                                    "typed_config": {"@type": _ROUTER},
                                                }
                                            ],
                                        },
                                    }
                                ]
                            }
                        ],
                    }
                ],
                "clusters": [
                    {
                        "name": "next",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "typed_extension_protocol_options": {
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                                "@type": _HTTP_OPTIONS,
                                "explicit_http_config": {"http2_protocol_options": {}},
                            }
                        },
                        "load_assignment": {
                            "cluster_name": "next",
                            "endpoints": [
                                {
                                    "lb_endpoints": [
                                        {
                                            "endpoint": {
                                                "address": {
                                                    "socket_address": {
                                                        "address": "127.0.0.1",
                                                        "port_value": upstream,
                                                    }
                                                }
                                            }
                                        }
                                    ]
                                }
                            ],
                        },
                    }
                ],
            },
        }

    return {"bare-client": proxy(first, second), "bare-server": proxy(second, app_port)}, first


@dataclass(frozen=True)
class Round:
    mode: str
    calls: int
    failed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    envoy_cpu_s: float
    server_cpu_s: float


def _h2load() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise SystemExit("h2load not found: install nghttp2-client (`make sysdeps` does)")
    return found


def _grpc_frame(payload: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _round(
    mode: str,
    port: int,
    body: Path,
    workdir: Path,
    envoys: list[Envoy],
    server_pid: int,
    *,
    rate: float,
    seconds: float,
) -> Round:
    """One h2load run at ``rate`` for ``seconds``; latency from its per-request log."""
    log = workdir / f"h2load-{mode}.tsv"
    log.unlink(missing_ok=True)
    calls = max(CONNECTIONS, int(rate * seconds))
    command = [
        _h2load(),
        f"--requests={calls}",
        f"--clients={CONNECTIONS}",
        "--max-concurrent-streams=1",
        f"--rps={rate / CONNECTIONS:g}",
        f"--data={body}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--header=:authority: {SERVER}",  # the client sidecar routes by it
        f"--log-file={log}",
        f"http://127.0.0.1:{port}{METHOD}",
    ]

    def envoy_cpu() -> float:
        return sum(cpu_seconds(e.pid) for e in envoys)

    before, server_before = envoy_cpu(), cpu_seconds(server_pid)
    run = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 4 + 30)
    used, server_used = envoy_cpu() - before, cpu_seconds(server_pid) - server_before
    if run.returncode != 0:
        raise RuntimeError(f"h2load failed ({run.returncode}): {run.stderr or run.stdout}")
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    latencies = sorted(int(row[2]) / 1000 for row in rows if row[1] == "200")
    failed = calls - len(latencies)
    if not latencies:
        raise RuntimeError(f"{mode}: no request answered 200:\n{run.stdout}")
    return Round(
        mode=mode,
        calls=calls,
        failed=failed,
        p50_ms=_percentile(latencies, 0.50),
        p90_ms=_percentile(latencies, 0.90),
        p99_ms=_percentile(latencies, 0.99),
        envoy_cpu_s=used,
        server_cpu_s=server_used,
    )


async def _check_grpc(targets: dict[str, int], payload: bytes) -> None:
    """One real gRPC call per path: h2load's 200 does not say the gRPC status was OK."""
    for mode, port in targets.items():
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.default_authority", SERVER)]
        ) as channel:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
            try:
                answer = await call(payload, timeout=10)
            except grpc.aio.AioRpcError as exc:
                raise SystemExit(
                    f"{mode}: gRPC call failed: {exc.code().name} {exc.details()}"
                ) from exc
            if len(answer) != len(payload):
                raise SystemExit(f"{mode}: gRPC answer of {len(answer)} B, expected {len(payload)}")


def _rounds_table(rounds: list[Round], loads: list[str]) -> Table:
    table = Table(title="rounds (h2load, fixed rate)", title_justify="left")
    for column in ("#", "mode", "calls", "failed", "p50 ms", "p90 ms", "p99 ms", "Envoy CPU s"):
        table.add_column(column, justify="right")
    table.add_column("load avg", justify="right")
    for i, (r, load) in enumerate(zip(rounds, loads, strict=True), 1):
        table.add_row(
            str(i),
            r.mode,
            str(r.calls),
            str(r.failed),
            f"{r.p50_ms:.3f}",
            f"{r.p90_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.envoy_cpu_s:.2f}" if r.mode in PAIRS else "",
            load,
        )
    return table


def _summary(
    console: Console, rounds: list[Round], rss: dict[str, tuple[float, float]], rate: float
) -> None:
    def median(mode: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in rounds if r.mode == mode))

    table = Table(title=f"sidecar overhead at {rate:g} calls/s (medians of rounds)")
    columns = ("", "direct", "bare", "mesh", "mtls", "Δ mesh (ms)", "Δ bare (ms)", "Δ mtls (ms)")
    for column in (*columns, "mesh/bare", "mtls/mesh"):
        table.add_column(column, justify="right")
    deltas = {}
    for field in ("p50_ms", "p90_ms", "p99_ms"):
        direct, bare, mesh, mtls = (median(m, field) for m in ("direct", "bare", "mesh", "mtls"))
        deltas[field] = mesh - direct
        table.add_row(
            field.removesuffix("_ms"),
            f"{direct:.3f} ms",
            f"{bare:.3f} ms",
            f"{mesh:.3f} ms",
            f"{mtls:.3f} ms",
            f"{mesh - direct:+.3f}",
            f"{bare - direct:+.3f}",
            f"{mtls - direct:+.3f}",
            f"{mesh / bare:.2f}",
            f"{mtls / mesh:.2f}",
        )
    console.print(table)

    def cpu_per_1000(mode: str) -> float:
        of_mode = [r for r in rounds if r.mode == mode]
        return sum(r.envoy_cpu_s for r in of_mode) / sum(r.calls for r in of_mode) * 1e3

    mesh_cpu, bare_cpu, mtls_cpu = cpu_per_1000("mesh"), cpu_per_1000("bare"), cpu_per_1000("mtls")
    # CPU-seconds per 1000 calls is vCPU at 1000 calls/s. Each call crosses two proxies;
    # Istio's per-proxy figure compares with half the sum.
    costs = Table(title="proxy cost vs goals")
    for column in ("", "measured", "bare pair", "mesh/bare", "goal", "verdict"):
        costs.add_column(column, justify="right")

    def verdict(ok: bool) -> str:
        return "[green]meets[/green]" if ok else "[red]MISSES[/red]"

    bare_dp90 = median("bare", "p90_ms") - median("direct", "p90_ms")
    costs.add_row(
        "Δp90",
        f"{deltas['p90_ms']:+.3f} ms",
        f"{bare_dp90:+.3f} ms",
        "",
        f"<= {GOAL_DP90_MS} ms",
        verdict(deltas["p90_ms"] <= GOAL_DP90_MS),
    )
    costs.add_row(
        "Envoy vCPU per 1000 calls/s, per sidecar (half the pair)",
        f"{mesh_cpu / 2:.3f}",
        f"{bare_cpu / 2:.3f}",
        f"{mesh_cpu / bare_cpu:.2f}",
        f"<= {GOAL_VCPU_PER_1000}",
        verdict(mesh_cpu / 2 <= GOAL_VCPU_PER_1000),
    )
    mtls_dp90 = median("mtls", "p90_ms") - median("mesh", "p90_ms")
    costs.add_row("mTLS: Δp90 against the plaintext pair", f"{mtls_dp90:+.3f} ms", "", "", "", "")
    costs.add_row(
        "mTLS: Envoy vCPU per 1000 calls/s, per sidecar",
        f"{mtls_cpu / 2:.3f}",
        "",
        f"{mtls_cpu / mesh_cpu:.2f} (of mesh)",
        "",
        "",
    )
    for name, (total, anon) in rss.items():
        costs.add_row(
            f"RSS {name} (anonymous)",
            f"{total:.1f} MB ({anon:.1f})",
            "",
            "",
            f"<= {GOAL_RSS_MB:g} MB" if name in PAIRS["mesh"] else "",
            verdict(total <= GOAL_RSS_MB) if name in PAIRS["mesh"] else "",
        )
    console.print(costs)
    server_us = sum(r.server_cpu_s for r in rounds) / sum(r.calls for r in rounds) * 1e6
    # A yardstick from the same run: absolute CPU figures depend on the machine (here a
    # shared, virtualized one where every syscall and context switch is dear).
    console.print(
        f"CPU per call: {mesh_cpu * 1e3 / 2:.0f} µs per mesh sidecar, {bare_cpu * 1e3 / 2:.0f} µs "
        f"per bare Envoy; the trivial grpc.aio server (C core + Python handler) {server_us:.0f} µs"
    )
    console.print(f"for comparison, {ISTIO}")
    if any(r.failed for r in rounds):
        console.print("[red]some calls failed: the numbers above are not trustworthy[/red]")


async def _bench(console: Console, rounds: int, seconds: float, rate: float, size: int) -> None:
    payload = b"p" * size
    with tempfile.TemporaryDirectory(prefix="sidecar-overhead-") as tmp:
        workdir = Path(tmp)
        body = workdir / "request.bin"
        body.write_bytes(_grpc_frame(payload))
        server, app_port = _start_server(workdir, size)
        try:
            mesh_configs, egress_port = _sidecar_bootstraps(app_port)
            ca = CertificateAuthority.create_root(dt.datetime.now(dt.UTC))
            mtls_configs, mtls_port = _sidecar_bootstraps(app_port, ca)
            bare_configs, bare_port = _bare_bootstraps(app_port)
            configs = {**mesh_configs, **mtls_configs, **bare_configs}
            with running_envoys(configs, workdir, concurrency=1) as envoys:
                for envoy in envoys.values():
                    envoy.wait_ready()
                targets = {
                    "direct": app_port,
                    "mesh": egress_port,
                    "mtls": mtls_port,
                    "bare": bare_port,
                }
                pair = {m: [envoys[n] for n in names] for m, names in PAIRS.items()}

                def one(mode: str, length: float) -> Round:
                    return _round(
                        mode,
                        targets[mode],
                        body,
                        workdir,
                        pair.get(mode, []),
                        server.pid,
                        rate=rate,
                        seconds=length,
                    )

                await _check_grpc(targets, payload)
                for mode in MODES:  # connections up, code paths warm
                    one(mode, 1.0)
                results: list[Round] = []
                loads: list[str] = []
                orders = itertools.cycle(
                    [MODES[i:] + MODES[:i] for i in range(len(MODES))]  # rotate the order
                )
                for _ in range(rounds):
                    for mode in next(orders):
                        r = one(mode, seconds)
                        results.append(r)
                        loads.append(load_average().split("/")[0])
                        console.print(
                            f"  round {len(results)}: {mode:6} p50 {r.p50_ms:.3f} ms "
                            f"p90 {r.p90_ms:.3f} ms p99 {r.p99_ms:.3f} ms failed {r.failed}"
                        )
                await _check_grpc(targets, payload)
                rss = {name: rss_mb(e.pid) for name, e in envoys.items()}
        finally:
            stop_processes([server])
    console.print(_rounds_table(results, loads))
    _summary(console, results, rss, rate)
    console.print(f"load average at the end: {load_average()}")


GRPC_MODES = ("direct", "mesh", "proxyless")
GRPC_PAIRS = {
    "mesh": ("bench-client-sidecar", "bench-server-sidecar"),
    "proxyless": ("bench-server-sidecar",),
}
WARMUP_CALLS = 200
"""Calls a driver makes before it measures: connections up, xDS resolved, code paths warm."""


@dataclass(frozen=True)
class Drive:
    """What one driver process calls: ``target`` (host:port or ``xds:///name``) at ``rate``."""

    target: str
    authority: str | None
    bootstrap: str | None
    rate: float
    seconds: float
    payload: int


async def _drive(spec: Drive) -> dict[str, Any]:
    """Open loop at ``spec.rate`` for ``spec.seconds`` after the warm-up: latencies of every
    call started in the window, and this process's CPU over it."""
    if spec.bootstrap is not None:
        os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = spec.bootstrap  # read by the first xds: channel
    options = [] if spec.authority is None else [("grpc.default_authority", spec.authority)]
    payload = b"p" * spec.payload
    async with grpc.aio.insecure_channel(spec.target, options=options) as channel:
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        for _ in range(WARMUP_CALLS):
            await stub(payload, timeout=30, wait_for_ready=True)
        latencies: list[float] = []
        failed = 0

        async def one() -> None:
            nonlocal failed
            started = time.perf_counter()
            try:
                answer = await stub(payload, timeout=10)
            except grpc.aio.AioRpcError:
                failed += 1
                return
            if len(answer) != spec.payload:
                failed += 1
                return
            latencies.append((time.perf_counter() - started) * 1000)

        calls = max(1, int(spec.rate * spec.seconds))
        cpu_before = time.process_time()
        start = time.perf_counter()
        tasks = []
        for i in range(calls):
            delay = start + i / spec.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        cpu = time.process_time() - cpu_before
    latencies.sort()
    return {
        "calls": calls,
        "total_calls": calls + WARMUP_CALLS,
        "failed": failed,
        "p50_ms": _percentile(latencies, 0.50) if latencies else math.nan,
        "p90_ms": _percentile(latencies, 0.90) if latencies else math.nan,
        "p99_ms": _percentile(latencies, 0.99) if latencies else math.nan,
        "client_cpu_s": cpu,
    }


@dataclass(frozen=True)
class GrpcRound:
    mode: str
    calls: int
    failed: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_s: float
    """The client process over the measured window."""
    envoy_cpu_s: float
    """The Envoys the mode's calls cross, over the driver's whole run (warm-up included)."""
    envoy_calls: int
    """Calls that crossed them in that time (warm-up included)."""


def _grpc_round(
    mode: str, spec: Drive, workdir: Path, envoys: list[Envoy], *, timeout: float
) -> GrpcRound:
    spec_file, out = workdir / f"drive-{mode}.json", workdir / f"drive-{mode}.out.json"
    spec_file.write_text(json.dumps(spec.__dict__))
    out.unlink(missing_ok=True)

    def envoy_cpu() -> float:
        return sum(cpu_seconds(e.pid) for e in envoys)

    before = envoy_cpu()
    run = subprocess.run(
        [sys.executable, "-m", "bench.sidecar_overhead", "--drive", str(spec_file), str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
    used = envoy_cpu() - before
    if run.returncode != 0 or not out.exists():
        raise RuntimeError(f"{mode}: the driver failed ({run.returncode}):\n{run.stderr[-3000:]}")
    result = json.loads(out.read_text())
    return GrpcRound(
        mode=mode,
        calls=result["calls"],
        failed=result["failed"],
        p50_ms=result["p50_ms"],
        p90_ms=result["p90_ms"],
        p99_ms=result["p99_ms"],
        client_cpu_s=result["client_cpu_s"],
        envoy_cpu_s=used,
        envoy_calls=result["total_calls"],
    )


@contextlib.asynccontextmanager
async def _control_plane(workdir: Path) -> AsyncIterator[tuple[ControlPlane, str]]:
    """The real control plane, in this process; yields it and its xDS address."""
    state = workdir / "state"
    state.mkdir()
    cp = ControlPlane(ControlPlaneSettings(state))
    bound: asyncio.Future[BoundAddresses] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(cp.run(on_ready=bound.set_result))
    try:
        waiting: set[asyncio.Future[Any]] = {serving, bound}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED, timeout=30)
        if serving.done():
            serving.result()  # raises why it stopped
        if not bound.done():
            raise RuntimeError("the control plane did not start within 30 s")
        yield cp, bound.result().xds_address
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


def _grpc_summary(console: Console, rounds: list[GrpcRound], rate: float) -> None:
    def median(mode: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in rounds if r.mode == mode))

    table = Table(title=f"proxyless vs sidecar pair at {rate:g} calls/s (grpc.aio client, medians)")
    for column in ("", "direct", "mesh", "proxyless", "Δ mesh", "Δ proxyless", "proxyless - mesh"):
        table.add_column(column, justify="right")
    for field in ("p50_ms", "p90_ms", "p99_ms"):
        direct, mesh, proxyless = (median(m, field) for m in GRPC_MODES)
        table.add_row(
            field.removesuffix("_ms"),
            f"{direct:.3f} ms",
            f"{mesh:.3f} ms",
            f"{proxyless:.3f} ms",
            f"{mesh - direct:+.3f} ms",
            f"{proxyless - direct:+.3f} ms",
            f"{proxyless - mesh:+.3f} ms",
        )
    console.print(table)

    def per_call_us(mode: str) -> tuple[float, float]:
        of_mode = [r for r in rounds if r.mode == mode]
        client = sum(r.client_cpu_s for r in of_mode) / sum(r.calls for r in of_mode) * 1e6
        envoy = sum(r.envoy_cpu_s for r in of_mode) / sum(r.envoy_calls for r in of_mode) * 1e6
        return client, envoy

    cpu = Table(title="CPU per call (µs): the client process and the Envoys its calls cross")
    for column in ("", "client", "Envoys", "total", "total - direct"):
        cpu.add_column(column, justify="right")
    direct_total = sum(per_call_us("direct"))
    for mode in GRPC_MODES:
        client, envoy = per_call_us(mode)
        cpu.add_row(
            mode,
            f"{client:.0f}",
            f"{envoy:.0f}",
            f"{client + envoy:.0f}",
            f"{client + envoy - direct_total:+.0f}",
        )
    console.print(cpu)
    console.print(
        "µs per call is vCPU-ms per 1000 calls/s: 100 µs per call = 0.1 vCPU at 1000 calls/s"
    )
    if any(r.failed for r in rounds):
        console.print("[red]some calls failed: the numbers above are not trustworthy[/red]")


async def _bench_grpc(
    console: Console, rounds: int, seconds: float, rate: float, size: int
) -> None:
    with tempfile.TemporaryDirectory(prefix="sidecar-overhead-grpc-") as tmp:
        workdir = Path(tmp)
        server, app_port = _start_server(workdir, size)
        results: list[GrpcRound] = []
        loads: list[str] = []
        try:
            server_inbound = free_port()
            mesh_configs, egress_port = _sidecar_bootstraps(app_port, server_inbound=server_inbound)
            async with _control_plane(workdir) as (cp, xds_address):
                cp.publisher.update(
                    _services(app_port, proxyless=True), _server_endpoints(server_inbound)
                )
                node = ProxyNode(NodeId.proxyless(CLIENT, "0"))
                bootstrap = json.dumps(grpc_bootstrap(node, xds_address))
                specs = {
                    "direct": Drive(f"127.0.0.1:{app_port}", None, None, rate, seconds, size),
                    "mesh": Drive(f"127.0.0.1:{egress_port}", SERVER, None, rate, seconds, size),
                    "proxyless": Drive(f"xds:///{SERVER}", None, bootstrap, rate, seconds, size),
                }
                with running_envoys(mesh_configs, workdir, concurrency=1) as envoys:
                    for envoy in envoys.values():
                        envoy.wait_ready()
                    pair = {m: [envoys[n] for n in names] for m, names in GRPC_PAIRS.items()}

                    async def one(mode: str, spec: Drive) -> GrpcRound:
                        # The driver is a process of its own; the control plane in this one
                        # must keep answering it meanwhile.
                        return await asyncio.to_thread(
                            _grpc_round,
                            mode,
                            spec,
                            workdir,
                            pair.get(mode, []),
                            timeout=spec.seconds * 4 + 60,
                        )

                    for mode in GRPC_MODES:  # warm: a short round each
                        await one(mode, dataclasses.replace(specs[mode], seconds=1.0))
                    orders = itertools.cycle(
                        [GRPC_MODES[i:] + GRPC_MODES[:i] for i in range(len(GRPC_MODES))]
                    )
                    for _ in range(rounds):
                        for mode in next(orders):
                            r = await one(mode, specs[mode])
                            results.append(r)
                            loads.append(load_average().split("/")[0])
                            console.print(
                                f"  round {len(results)}: {mode:9} p50 {r.p50_ms:.3f} ms "
                                f"p90 {r.p90_ms:.3f} ms p99 {r.p99_ms:.3f} ms "
                                f"failed {r.failed}"
                            )
        finally:
            stop_processes([server])
    table = Table(title="rounds (grpc.aio client, fixed rate)", title_justify="left")
    for column in ("#", "mode", "calls", "failed", "p50 ms", "p90 ms", "p99 ms", "load avg"):
        table.add_column(column, justify="right")
    for i, (r, load) in enumerate(zip(results, loads, strict=True), 1):
        table.add_row(
            str(i), r.mode, str(r.calls), str(r.failed),
            f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}", load,
        )  # fmt: skip
    console.print(table)
    _grpc_summary(console, results, rate)
    console.print(f"load average at the end: {load_average()}")


@app.command()
def main(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per mode.")] = 6,
    seconds: Annotated[float, typer.Option(min=0.5, help="Length of a round.")] = 5.0,
    rate: Annotated[float, typer.Option(min=1, help="Calls per second (open loop).")] = 500.0,
    payload: Annotated[int, typer.Option(min=0, help="Request and response bytes.")] = 1024,
    client: Annotated[
        str,
        typer.Option(
            help="h2load: the sidecar pair against a bare pair; grpc: proxyless against the pair."
        ),
    ] = "h2load",
    serve: Annotated[Path | None, typer.Option(hidden=True)] = None,
    drive: Annotated[tuple[Path, Path] | None, typer.Option(hidden=True)] = None,
) -> None:
    """Measure what the two sidecars add to a unary call: against the server direct and a bare
    Envoy pair (h2load), or against proxyless gRPC (``--client grpc``)."""
    if serve is not None:  # the server process, started by the benchmark itself
        asyncio.run(_serve(serve, payload))
        return
    if drive is not None:  # a grpc.aio client process, started by the benchmark itself
        spec_file, out = drive
        result = asyncio.run(_drive(Drive(**json.loads(spec_file.read_text()))))
        out.write_text(json.dumps(result))
        return
    if client not in ("h2load", "grpc"):
        raise typer.BadParameter(f"--client: {client!r} (h2load or grpc)")
    console = Console(width=150)
    print_header(console, "bench.sidecar_overhead")
    if client == "grpc":
        console.print(
            f"{rounds} rounds per mode, {seconds:g} s each at {rate:g} calls/s (one grpc.aio "
            f"client process per round, {WARMUP_CALLS} warm-up calls), {payload} B request and "
            "response, Envoy --concurrency 1"
        )
        asyncio.run(_bench_grpc(console, rounds, seconds, rate, payload))
        return
    console.print(
        f"{rounds} rounds per mode, {seconds:g} s each at {rate:g} calls/s "
        f"(h2load, {CONNECTIONS} connections), {payload} B request and response, "
        "Envoy --concurrency 1"
    )
    asyncio.run(_bench(console, rounds, seconds, rate, payload))


if __name__ == "__main__":
    app()
