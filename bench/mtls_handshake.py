"""mTLS handshake cost per new connection at a sidecar's inbound listener, against plaintext.

The callee is the sidecar benchmark's ``bench-server`` sidecar (``bench.sidecar_overhead``'s
rig: the mesh's own translation, ``--concurrency 1``), run twice side by side: once plaintext
(no CA, as ``GRPCMESH_MTLS=off``) and once with mTLS STRICT (its certificate and the mesh
roots, issued by a mesh CA the benchmark creates, as static secrets: what SDS would send).

The caller is curl (C, HTTP/2; h2load cannot present a client certificate), one process per
connection: it connects to the callee's inbound listener, for mTLS presents a workload
certificate the same CA issued to ``bench-client``'s identity, makes one gRPC call (a
length-prefixed frame POSTed with ``te: trailers``), checks nothing itself, and closes. Its
``-w`` timings give TCP connect, TLS done and the call answered; its headers give the gRPC
status (every call must be OK). curl does not check the server's name (``-k``: the callee's
certificate names a SPIFFE ID, not 127.0.0.1); the callee checks the caller's certificate in
full, which is the side measured.

The pair modes put the caller's own sidecar in front (``bench-client``'s, the mesh's config
but for ``max_requests_per_connection: 1`` on its cluster to the callee, so each call opens a
new sidecar-to-sidecar connection; curl reaches it in plaintext, as an app does): Envoy to
Envoy, with the TLS version and ciphers Envoy negotiates, measured on both sidecars.
``pair-mtls`` keeps the mesh's TLS config, under which the caller resumes its previous TLS
session; ``pair-mtls-full``'s caller keeps none (``max_session_keys: 0``): every connection a
full handshake, as with a new peer or after a restart.

Rounds alternate the modes (the order reverses every round). Per round: each Envoy's CPU over
its N connections (the scheduler's per-thread runtime, ``/proc/<pid>/task/*/schedstat``: clock
ticks are 10 ms, a connection costs less), and the callee listener's ``ssl.*`` counters
(``ssl.handshake`` must move by N in an mTLS mode and by 0 in a plaintext one: the run fails
otherwise). Reported per new connection: Envoy CPU µs (the callee's; the caller's too in the
pair modes), latency p50/p90/p99 of connect + handshake + one call, the ratio and the delta;
and per mTLS mode the TLS version, cipher, curve, signature algorithm and resumed sessions
the callee counted.

    python -m bench.mtls_handshake [--connections 200] [--rounds 4] [--payload 1024]
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bench._mesh import Envoy, load_average, print_header, running_envoys, stop_processes
from bench.sidecar_overhead import (
    CLIENT,
    METHOD,
    SERVER,
    _grpc_frame,
    _percentile,
    _sidecar_bootstraps,
    _start_server,
)
from grpcmesh_control.local.ports import allocate_ports
from grpcmesh_control.mesh.ca import CertificateAuthority, trust_bundle
from grpcmesh_control.mesh.certificates import node_identity
from grpcmesh_control.mesh.translate import NodeId
from grpcmesh_loadgen.procstat import thread_run_seconds

MODES = ("plaintext", "mtls", "pair-plaintext", "pair-mtls", "pair-mtls-full")
CALLEE = {
    "plaintext": "bench-server-sidecar",
    "mtls": "bench-server-mtls",
    "pair-plaintext": "bench-server-sidecar",
    "pair-mtls": "bench-server-mtls",
    "pair-mtls-full": "bench-server-mtls",
}
CALLER = {
    "pair-plaintext": "bench-client-sidecar",
    "pair-mtls": "bench-client-mtls",
    "pair-mtls-full": "bench-client-mtls-full",
}
"""The pair modes go through the caller's sidecar (egress), made to open a new connection to
the callee for every call (``max_requests_per_connection: 1``). ``pair-mtls`` keeps the mesh's
TLS config, so Envoy resumes the TLS session of the previous connection (an abbreviated
handshake); ``pair-mtls-full``'s caller keeps no session (``max_session_keys: 0``), so every
connection makes a full handshake, as after a sidecar restart or with a new peer."""
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_STATS = ("versions", "ciphers", "curves", "sigalgs")
"""Envoy's per-handshake ``ssl.<kind>.<name>`` counters: what was negotiated."""

app = typer.Typer(add_completion=False)


@dataclass(frozen=True)
class Round:
    mode: str
    connections: int
    failed: int
    total_ms: list[float]
    """Per connection: TCP connect + TLS handshake (mTLS) + one gRPC call, as curl timed it."""
    handshake_ms: list[float]
    """Per connection: TLS done minus TCP connected (mTLS only)."""
    envoy_cpu_s: float
    """The callee's sidecar."""
    caller_cpu_s: float
    """The caller's sidecar (pair modes)."""
    ssl: dict[str, int]
    """The callee listener's ``ssl.*`` counters, moved over the round."""
    seconds: float
    load: str

    @property
    def handshakes(self) -> int:
        return self.ssl.get("handshake", 0)


def _curl() -> str:
    found = shutil.which("curl")
    if found is None:
        raise SystemExit("curl not found (install curl)")
    return found


def listener_ssl_stats(envoy: Envoy) -> dict[str, int]:
    """The listeners' ``ssl.*`` counters of ``envoy`` (clusters excluded), summed by the name
    after ``ssl.``: ``handshake``, ``versions.TLSv1.3``, ..."""
    query = urllib.parse.urlencode({"format": "json", "filter": r"^listener\..*\.ssl\."})
    url = f"http://127.0.0.1:{envoy.admin_port}/stats?{query}"
    with urllib.request.urlopen(url, timeout=5) as response:
        stats = json.load(response)["stats"]
    out: dict[str, int] = {}
    for stat in stats:
        name, value = stat.get("name"), stat.get("value")
        if not isinstance(name, str) or not isinstance(value, int) or ".ssl." not in name:
            continue
        key = name.split(".ssl.", 1)[1]
        out[key] = out.get(key, 0) + value
    return out


def _command(mode: str, port: int, body: Path, tls_dir: Path) -> list[str]:
    """One new connection and one call: to the callee's inbound listener, or (pair modes) in
    plaintext to the caller's sidecar, which routes by the authority."""
    common = [
        _curl(),
        "--silent",
        "--show-error",
        "--max-time",
        "10",
        "--request",
        "POST",
        "--data-binary",
        f"@{body}",
        "--header",
        "content-type: application/grpc",
        "--header",
        "te: trailers",
        "--dump-header",
        "-",  # headers and trailers (grpc-status) on stdout
        "--output",
        "/dev/null",
        "--write-out",
        "timings %{time_connect} %{time_appconnect} %{time_total} %{http_code}\n",
    ]
    if mode in CALLER:
        return [
            *common,
            "--http2-prior-knowledge",
            "--header",
            f"host: {SERVER}",  # the :authority the caller's sidecar routes by
            f"http://127.0.0.1:{port}{METHOD}",
        ]
    if mode == "plaintext":
        return [*common, "--http2-prior-knowledge", f"http://127.0.0.1:{port}{METHOD}"]
    return [
        *common,
        "--http2",
        "--insecure",  # the callee names a SPIFFE ID, not 127.0.0.1; it checks us in full
        "--cert",
        str(tls_dir / "cert.pem"),
        "--key",
        str(tls_dir / "key.pem"),
        f"https://127.0.0.1:{port}{METHOD}",
    ]


def _one_round(
    mode: str, port: int, envoy: Envoy, caller: Envoy | None, body: Path, tls_dir: Path, n: int
) -> Round:
    command = _command(mode, port, body, tls_dir)
    totals: list[float] = []
    handshakes_ms: list[float] = []
    failed = 0
    stats_before = listener_ssl_stats(envoy)
    caller_before = 0.0 if caller is None else thread_run_seconds(caller.pid)
    started, cpu_before = time.monotonic(), thread_run_seconds(envoy.pid)
    for _ in range(n):
        run = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        lines = run.stdout.lower().splitlines()
        timings = [line.split() for line in lines if line.startswith("timings ")]
        ok = run.returncode == 0 and "grpc-status: 0" in lines and bool(timings)
        if not ok or timings[-1][4] != "200":
            failed += 1
            if failed <= 3:
                print(f"{mode}: call failed ({run.returncode}): {run.stdout}{run.stderr}")
            continue
        connect, tls_done, total = (float(x) * 1000 for x in timings[-1][1:4])
        totals.append(total)
        if mode == "mtls":  # curl's own TLS (pair modes: curl to the caller is plaintext)
            handshakes_ms.append(tls_done - connect)
    cpu = thread_run_seconds(envoy.pid) - cpu_before
    caller_cpu = 0.0 if caller is None else thread_run_seconds(caller.pid) - caller_before
    seconds = time.monotonic() - started
    after = listener_ssl_stats(envoy)
    moved = {k: v - stats_before.get(k, 0) for k, v in after.items() if v != stats_before.get(k, 0)}
    return Round(
        mode, n, failed, sorted(totals), sorted(handshakes_ms), cpu, caller_cpu, moved,
        seconds, load_average().split("/")[0],
    )  # fmt: skip


def _idle_cpu_per_s(envoy: Envoy, seconds: float = 1.0) -> float:
    before = thread_run_seconds(envoy.pid)
    time.sleep(seconds)  # a measurement window, not a wait for a condition
    return (thread_run_seconds(envoy.pid) - before) / seconds


def _write_caller_tls(ca: CertificateAuthority, tls_dir: Path) -> None:
    """A workload certificate from the mesh CA for the caller's identity, as curl reads it."""
    now = dt.datetime.now(dt.UTC)
    issued = ca.issue_workload(node_identity(str(NodeId.sidecar(CLIENT, "0"))), now)
    (tls_dir / "cert.pem").write_bytes(issued.cert_chain_pem())
    (tls_dir / "key.pem").write_bytes(issued.key_pem())
    (tls_dir / "roots.pem").write_bytes(trust_bundle([ca.root], now))


def _new_connection_per_call(bootstrap: dict[str, Any], *, resume: bool = True) -> None:
    """The caller's sidecar closes its connection to the callee after each call, so every call
    opens (and, with mTLS, handshakes) a new one; without ``resume`` it keeps no TLS session
    to resume either. The rest of its config stays the mesh's."""
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"].startswith(f"{SERVER}|"):
            options = cluster["typed_extension_protocol_options"][_HTTP_OPTIONS_KEY]
            options["common_http_protocol_options"] = {"max_requests_per_connection": 1}
            if not resume:
                cluster["transport_socket"]["typed_config"]["max_session_keys"] = 0
            return
    raise RuntimeError(f"no cluster to {SERVER} in the caller's bootstrap")


def run_benchmark(console: Console, connections: int, rounds: int, payload: int) -> list[Round]:
    with tempfile.TemporaryDirectory(prefix="mtls-handshake-") as tmp:
        workdir = Path(tmp)
        body = workdir / "request.bin"
        body.write_bytes(_grpc_frame(b"p" * payload))
        server, app_port = _start_server(workdir, payload)
        try:
            plain_in, mtls_in = allocate_ports(2)
            ca = CertificateAuthority.create_root(dt.datetime.now(dt.UTC))
            _write_caller_tls(ca, workdir)
            plain, plain_egress = _sidecar_bootstraps(app_port, server_inbound=plain_in)
            mtls, mtls_egress = _sidecar_bootstraps(app_port, ca, server_inbound=mtls_in)
            # A third caller sidecar, to the same mTLS callee, for full handshakes.
            full, full_egress = _sidecar_bootstraps(app_port, ca, server_inbound=mtls_in)
            configs = {**plain, **mtls, "bench-client-mtls-full": full["bench-client-mtls"]}
            for mode, name in CALLER.items():
                _new_connection_per_call(configs[name], resume=mode != "pair-mtls-full")
            ports = {
                "plaintext": plain_in,
                "mtls": mtls_in,
                "pair-plaintext": plain_egress,
                "pair-mtls": mtls_egress,
                "pair-mtls-full": full_egress,
            }
            with running_envoys(configs, workdir, concurrency=1) as envoys:
                for envoy in envoys.values():
                    envoy.wait_ready()
                callee = {mode: envoys[name] for mode, name in CALLEE.items()}
                caller = {mode: envoys[name] for mode, name in CALLER.items()}

                def one(mode: str, n: int) -> Round:
                    return _one_round(
                        mode, ports[mode], callee[mode], caller.get(mode), body, workdir, n
                    )

                for mode in MODES:  # code paths warm, and every path proven before measuring
                    if one(mode, 3).failed:
                        raise SystemExit(f"{mode}: the warm-up calls failed")
                idle = {name: _idle_cpu_per_s(envoy) for name, envoy in envoys.items()}
                results: list[Round] = []
                for i in range(rounds):
                    order = MODES if i % 2 == 0 else MODES[::-1]
                    for mode in order:
                        r = one(mode, connections)
                        results.append(r)
                        console.print(
                            f"  round {len(results)}: {mode:14} {r.connections} connections in "
                            f"{r.seconds:.1f} s, callee Envoy CPU {r.envoy_cpu_s * 1e3:.1f} ms, "
                            f"caller {r.caller_cpu_s * 1e3:.1f} ms, "
                            f"ssl.handshake +{r.handshakes}, failed {r.failed}, load {r.load}"
                        )
        finally:
            stop_processes([server])
    _report(console, results, idle)
    return results


def _report(console: Console, rounds: list[Round], idle: dict[str, float]) -> None:
    def per_connection_us(mode: str, field: str = "envoy_cpu_s") -> float:
        of_mode = [r for r in rounds if r.mode == mode]
        used = sum(float(getattr(r, field)) for r in of_mode)
        return used / sum(r.connections for r in of_mode) * 1e6

    def latency(mode: str, q: float, field: str = "total_ms") -> float:
        # Median over rounds of each round's percentile: a disturbed round weighs one vote.
        return float(
            statistics.median(_percentile(getattr(r, field), q) for r in rounds if r.mode == mode)
        )

    def row(table: Table, label: str, plain: float, mtls: float, unit: str, digits: int) -> None:
        table.add_row(
            label,
            f"{plain:.{digits}f} {unit}",
            f"{mtls:.{digits}f} {unit}",
            f"{mtls / plain:.2f}" if plain else "",
            f"{mtls - plain:+.{digits}f} {unit}",
        )

    pair = "curl -> caller sidecar -> callee sidecar, a new sidecar-to-sidecar connection per call"
    for plain_mode, mtls_mode, title in (
        ("plaintext", "mtls", "curl -> callee sidecar (inbound), a new connection per call"),
        ("pair-plaintext", "pair-mtls-full", f"{pair}, full handshakes"),
        ("pair-plaintext", "pair-mtls", f"{pair}, TLS sessions resumed (the mesh's config)"),
    ):
        table = Table(title=f"per new connection: {title}")
        for column in ("", "plaintext", "mTLS", "mTLS/plaintext", "Δ"):
            table.add_column(column, justify="right")
        row(
            table, "callee Envoy CPU", per_connection_us(plain_mode),
            per_connection_us(mtls_mode), "µs", 0,
        )  # fmt: skip
        if plain_mode in CALLER:
            row(
                table, "caller Envoy CPU", per_connection_us(plain_mode, "caller_cpu_s"),
                per_connection_us(mtls_mode, "caller_cpu_s"), "µs", 0,
            )  # fmt: skip
        for q in (0.50, 0.90, 0.99):
            label = f"connect + call p{q * 100:.0f}"
            row(table, label, latency(plain_mode, q), latency(mtls_mode, q), "ms", 2)
        if plain_mode == "plaintext":
            handshake = latency("mtls", 0.5, "handshake_ms")
            table.add_row("TLS handshake p50 (curl)", "", f"{handshake:.2f} ms", "", "")
        console.print(table)
    console.print(
        "idle Envoys (CPU per second; already inside the figures above): "
        + ", ".join(f"{name} {cpu * 1e3:.1f} ms" for name, cpu in idle.items())
    )
    for mode in (m for m in MODES if "mtls" in m):
        moved: dict[str, int] = {}
        for r in rounds:
            if r.mode == mode:
                for key, value in r.ssl.items():
                    moved[key] = moved.get(key, 0) + value
        kinds = {
            kind: sorted(k.split(".", 1)[1] for k in moved if k.startswith(kind + "."))
            for kind in TLS_STATS
        }
        console.print(
            f"{mode}, negotiated at the callee (its ssl counters): "
            + "; ".join(f"{kind} {', '.join(names) or '?'}" for kind, names in kinds.items())
            + f"; sessions resumed {moved.get('session_reused', 0)} of "
            f"{moved.get('handshake', 0)}"
        )
    console.print("certificates: ECDSA P-256 keys, issued by the mesh CA")
    handshakes = {m: sum(r.handshakes for r in rounds if r.mode == m) for m in MODES}
    n = {m: sum(r.connections for r in rounds if r.mode == m) for m in MODES}
    console.print(
        "ssl.handshake at the callee: "
        + ", ".join(f"{m} +{handshakes[m]} over {n[m]} connections" for m in MODES)
    )
    console.print(f"load average at the end: {load_average()}")


@app.command()
def main(
    connections: Annotated[int, typer.Option(min=1, help="New connections per round.")] = 200,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per mode (alternating).")] = 4,
    payload: Annotated[int, typer.Option(min=0, help="Request and response bytes.")] = 1024,
) -> None:
    """Measure the callee sidecar's cost of an mTLS handshake per new connection."""
    console = Console(width=150)
    print_header(console, "bench.mtls_handshake")
    console.print(
        f"{rounds} rounds per mode of {connections} new connections (curl, one process each: "
        f"connect, handshake, one {payload} B gRPC call, close), Envoy --concurrency 1"
    )
    results = run_benchmark(console, connections, rounds, payload)
    failed = sum(r.failed for r in results)
    wrong = [r for r in results if r.handshakes != (r.connections if "mtls" in r.mode else 0)]
    if failed or wrong:
        console.print(
            f"[red]{failed} calls failed; {len(wrong)} rounds where ssl.handshake did not move "
            "by the mTLS connections (or moved for plaintext)[/red]"
        )
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
