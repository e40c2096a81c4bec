"""What tests against local processes share: a free loopback port, and polling a condition
with a deadline (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

from grpcmesh_control.local.ports import allocate_ports

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
TIMEOUT = 10.0


def free_port() -> int:
    """A port free on 127.0.0.1 now (the caller binds it soon after). It comes from
    ``allocate_ports``, below the ephemeral range: a port the kernel hands out for port 0 may
    become some connection's source port before the caller binds it (a CI flake)."""
    return allocate_ports(1)[0]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now (for programs that take
    a base port and use the next ones too, as etcd's peer port is its client port + 1)."""
    while True:
        base = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind((LOCALHOST, port))
            except OSError:
                continue
        return base


async def poll(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = TIMEOUT) -> T:
    """``check()`` until it returns something other than None/False, or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result is not None and result is not False:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)
