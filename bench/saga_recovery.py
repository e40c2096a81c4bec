"""Saga recovery in the real local mesh: an orders replica SIGKILLed under open-loop load.

Starts ``grpcmesh up`` (manifests/examples: two orders replicas sharing RUN/orders/data.db,
each behind its Envoy sidecar), slows payments down so sagas are in flight, places orders
through the ingress, SIGKILLs orders replica v1-0's app mid-run, then measures how long after
the kill the last PENDING order ended - with no client retry - and proves the books from the
three stores (``python -m grpcmesh_orders.books``).

    python bench/saga_recovery.py [--orders 300] [--rate 30] [--kill-after 3]
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from grpcmesh_loadgen import run_load
from grpcmesh_orders.books import audit

REPO = Path(__file__).resolve().parents[1]
GRPCMESH = str(Path(sys.executable).with_name("grpcmesh"))

app = typer.Typer(add_completion=False)


def _state(run_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((run_dir / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state


def _wait_ready(run_dir: Path, launcher: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise RuntimeError(f"grpcmesh up exited with {launcher.returncode}")
        state = _state(run_dir)
        if state and state["replicas"] and all(r["ready"] for r in state["replicas"]):
            return state
        time.sleep(0.2)
    raise TimeoutError(f"the mesh was not ready in {timeout:g}s")


def _set_config(replica: dict[str, Any], **values: str) -> None:
    path = Path(replica["config_file"])
    config = yaml.safe_load(path.read_text()) or {}
    config.update(values)
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(yaml.safe_dump(config))
    tmp.replace(path)


def _reloads(metrics: str) -> float:
    """The kit's config reload counter of the app whose /metrics is at ``metrics``."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("grpcmesh_config_reloads_total "):
            return float(line.split()[1])
    return 0.0


def _pending(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM orders WHERE state = 'PENDING'").fetchone()
        return int(count)
    finally:
        conn.close()


async def _measure(
    run_dir: Path, state: dict[str, Any], orders: int, rate: float, kill_after: float
) -> None:
    victim = next(
        r for r in state["replicas"] if (r["service"], r["replica"]) == ("orders", "v1-0")
    )
    load = asyncio.create_task(run_load(state["ingress"], orders, rate, seed=7, deadline_s=10))
    await asyncio.sleep(kill_after)  # the fault's moment in the schedule, not a wait for a state
    os.kill(victim["app_pid"], signal.SIGKILL)
    killed = time.monotonic()
    pending_at_kill = _pending(run_dir / "orders" / "data.db")
    report = await load
    db = run_dir / "orders" / "data.db"
    deadline = killed + 180
    while _pending(db) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    finished = time.monotonic() - killed
    left = _pending(db)
    books = audit(db, run_dir / "inventory" / "data.db", run_dir / "payments" / "data.db")
    print(f"orders placed: {report.planned}, calls by status: {dict(report.statuses)}")
    print(f"outcomes seen by the client: {dict(report.outcomes)}")
    print(f"PENDING in the store when orders/v1-0 was killed: {pending_at_kill}")
    print(f"last PENDING order ended {finished:.1f}s after the kill ({left} still PENDING)")
    print(books.summary())


@app.command()
def main(
    orders: Annotated[int, typer.Option(min=1)] = 300,
    rate: Annotated[float, typer.Option(min=0.1)] = 30.0,
    kill_after: Annotated[float, typer.Option(min=0.0)] = 3.0,
    payments_latency_ms: Annotated[int, typer.Option(min=0)] = 200,
    startup_timeout: Annotated[float, typer.Option(min=1)] = 300.0,
) -> None:
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load average {load}")
    with tempfile.TemporaryDirectory(prefix="saga-recovery-") as tmp:
        run_dir = Path(tmp) / "run"
        with (Path(tmp) / "up.log").open("wb") as log:
            launcher = subprocess.Popen(
                [GRPCMESH, "up", "--state-dir", str(run_dir)],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            state = _wait_ready(run_dir, launcher, timeout=startup_timeout)
            payments = [r for r in state["replicas"] if r["service"] == "payments"]
            before = {r["metrics"]: _reloads(r["metrics"]) for r in payments}
            for replica in payments:
                _set_config(replica, latency_ms=str(payments_latency_ms))
            deadline = time.monotonic() + 30
            while any(_reloads(m) <= n for m, n in before.items()):
                if time.monotonic() > deadline:
                    raise TimeoutError("payments did not reload its config")
                time.sleep(0.1)
            asyncio.run(_measure(run_dir, state, orders, rate, kill_after))
        finally:
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(60)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()


if __name__ == "__main__":
    app()
