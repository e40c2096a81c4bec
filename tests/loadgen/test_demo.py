"""``python -m grpcmesh_loadgen.demo`` end to end: real services as processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from .procs import pids_with_env, wait_gone

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 90.0
SERVICES = ("catalog", "inventory", "payments", "orders")


async def start_demo(workdir: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "grpcmesh_loadgen.demo",
        "--workdir",
        str(workdir),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"},
    )


async def finish(proc: asyncio.subprocess.Process) -> str:
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode()


def leftovers(workdir: Path) -> list[int]:
    """Service processes of this demo still running (their environment names the workdir)."""
    return wait_gone(pids_with_env(str(workdir)), timeout_s=5.0)


async def test_demo_places_orders_and_stops_everything(tmp_path: Path) -> None:
    proc = await start_demo(tmp_path, "--orders", "20", "--rate", "20", "--decline-rate", "0.5")
    out = await finish(proc)
    assert proc.returncode == 0, out
    for name in SERVICES:
        assert f"{name}.log" in out  # the table of where things are
    assert "placing 20 orders at 20/s" in out
    assert "calls completed" in out and " 20 " in out.split("calls completed")[1].splitlines()[0]
    assert "calls failed" in out
    assert "orders CONFIRMED" in out
    assert "orders CANCELLED" in out  # half the payments are declined: a business outcome
    assert "result: PASS" in out
    assert "all services stopped" in out
    for name in SERVICES:  # each service shut down on its own after SIGTERM: exit 0, no SIGKILL
        assert f"{name} (exit 0)" in out
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("sig", "code", "says"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
async def test_interrupting_the_demo_stops_every_service(
    tmp_path: Path, sig: signal.Signals, code: int, says: str
) -> None:
    proc = await start_demo(tmp_path, "--orders", "100000", "--rate", "20")
    assert proc.stdout is not None
    seen = b""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while b"placing" not in seen:
            line = await proc.stdout.readline()
            assert line, f"demo ended early:\n{seen.decode()}"
            seen += line
    assert len(pids_with_env(str(tmp_path))) == len(SERVICES)
    proc.send_signal(sig)
    out = seen.decode() + await finish(proc)
    assert proc.returncode == code, out
    assert says in out
    assert leftovers(tmp_path) == []


async def test_a_service_that_cannot_start_is_named(tmp_path: Path) -> None:
    # A directory where payments' database file should be: sqlite cannot open it.
    (tmp_path / "payments.db").mkdir()
    proc = await start_demo(tmp_path, "--orders", "5")
    out = await finish(proc)
    assert proc.returncode == 2, out
    assert "service 'payments' did not start: exited with code" in out
    assert "last 30 lines of" in out
    assert leftovers(tmp_path) == []
