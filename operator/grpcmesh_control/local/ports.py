"""Free loopback ports for a local mesh.

Ports are picked below the kernel's ephemeral range: a port inside it could be handed out as
the source port of some outgoing connection between the moment it is chosen here and the moment
its process binds it. A candidate counts as free if it can be bound (without SO_REUSEPORT, so a
leftover gRPC server that set SO_REUSEPORT still blocks it).
"""

from __future__ import annotations

import random
import socket
import threading
from collections import deque
from pathlib import Path

from grpcmesh_control.mesh.errors import MeshError

__all__ = ["PortsExhausted", "allocate_ports"]

HOST = "127.0.0.1"
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL_LOW = 32768
_LOWEST = 10000  # below: well-known and commonly configured service ports
_ATTEMPTS_PER_PORT = 20
# Ports handed out recently in this process are not handed out again: the caller may not have
# bound one yet, and a second caller would then find it free too.
_RECENT_LIMIT = 4096
_recent: deque[int] = deque(maxlen=_RECENT_LIMIT)
_recent_lock = threading.Lock()


class PortsExhausted(MeshError, RuntimeError):
    """Not enough free ports were found."""


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def allocate_ports(count: int, *, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 just now."""
    rng = rng or random.Random()
    high = max(_ephemeral_low(), _LOWEST + count * 4)
    chosen: list[int] = []
    with _recent_lock:
        seen: set[int] = set(_recent)
        for _ in range(count * _ATTEMPTS_PER_PORT):
            if len(chosen) == count:
                break
            port = rng.randrange(_LOWEST, high)
            if port in seen:
                continue
            seen.add(port)
            if _bindable(port):
                chosen.append(port)
        if len(chosen) < count:
            raise PortsExhausted(f"found {len(chosen)} free loopback ports of {count} needed")
        _recent.extend(chosen)
    return chosen
