"""The ``grpcmesh-loadgen`` entry point, run as a process against the fake OrderService."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

import grpc

from .conftest import FakeServer

TIMEOUT_S = 30.0


async def loadgen(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "grpcmesh_loadgen",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_exit_zero_and_a_table_when_every_call_succeeds(fake_orders: FakeServer) -> None:
    fake_orders.servicer.cancel_every = 2
    code, out = await loadgen(fake_orders.address, "--orders", "10", "--rate", "200")
    assert code == 0, out
    assert "orders CONFIRMED" in out
    assert "orders CANCELLED" in out
    assert "result: PASS" in out
    assert len(fake_orders.servicer.requests) == 10


async def test_exit_one_when_a_call_fails(fake_orders: FakeServer) -> None:
    fake_orders.servicer.fail_every = 4
    fake_orders.servicer.fail_code = grpc.StatusCode.INTERNAL
    code, out = await loadgen(fake_orders.address, "--orders", "8", "--rate", "200")
    assert code == 1, out
    assert "calls failed INTERNAL" in out


async def test_json_report_in_closed_loop(fake_orders: FakeServer) -> None:
    code, out = await loadgen(
        fake_orders.address, "--orders", "5", "--rate", "inf", "--concurrency", "2", "--json"
    )
    assert code == 0, out
    data = json.loads(out)
    assert data["mode"] == "closed"
    assert data["statuses"] == {"OK": 5}


async def test_exit_two_when_the_target_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    code, out = await loadgen(address, "--connect-timeout", "0.5")
    assert code == 2, out
    assert f"cannot connect to {address}" in out


async def test_rejects_a_zero_rate() -> None:
    code, out = await loadgen("127.0.0.1:1", "--rate", "0")
    assert code == 2
    assert "--rate" in out
