"""Several worker processes per replica, sharing one gRPC port (``workers`` > 1).

A Python process serves on one core; ``workers: N`` runs N. ``ServiceApp.run()`` then becomes
the *parent*: it starts no gRPC server itself but re-runs its own command line N times as
workers, each binding the same port with ``SO_REUSEPORT`` (the kernel spreads new connections
across them), and supervises them:

- **Port.** The parent binds (without listening) the configured port with ``SO_REUSEPORT``,
  which reserves it and resolves port 0 to one concrete port every worker then binds.
- **Readiness.** A worker runs its start hooks (stores, sidecar ``/ready``) *before* it binds,
  so a worker that can take a connection is fully started; it then tells the parent and waits.
  Only when every worker is bound does the parent tell them all to report SERVING, so a health
  check answers the same whichever worker the kernel hands it to. A worker started later in
  place of a crashed one is told at once (the others already serve).
- **Drain.** SIGTERM (or SIGINT) to the parent is forwarded to every worker; each reports
  NOT_SERVING, drains and stops as a single-process app does, and the parent exits when all
  have. A worker whose parent dies (its link closes) stops the same way.
- **Crashes.** A worker that exits unexpectedly is started again, at most ``MAX_RESTARTS`` times
  per ``RESTART_WINDOW_S``; past that, or if a worker fails before the first SERVING, the parent
  stops the rest and fails (``WorkersFailed``), and whatever runs the replica restarts it.
- **Metrics.** prometheus_client's multiprocess mode: workers write their values to files in a
  private directory (``PROMETHEUS_MULTIPROC_DIR``, set before they import anything) and the
  parent serves one ``/metrics`` that sums them, on the configured metrics port, so a scrape
  sees one page per replica as before. A dead worker's files are marked dead; its counters
  keep counting in the sum (a counter of a replica must not go down).

Behind a sidecar: Envoy multiplexes its calls to the app over one HTTP/2 connection, which one
worker owns. For an app with workers the mesh therefore caps the calls in flight per connection
in the sidecar's cluster for it, so under load Envoy opens more connections, which the kernel
spreads. (A limit the server announced instead would refuse the streams Envoy sends on a new
connection before it has read the announcement.)

Live config reloads need nothing extra: every worker watches the config file itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Info, multiprocess

from grpcmesh_kit.config import KitSettings
from grpcmesh_kit.metrics import HttpMetrics

log = logging.getLogger(__name__)

WORKER_ENV = "GRPCMESH_KIT_WORKER"
"""Set by the parent on its workers: ``<index>:<port>:<link fd>``. Not a setting: only the
parent sets it (a process that has it is a worker, whatever ``workers`` says)."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_MARGIN_S = 10.0
"""Beyond drain and grace: how long the parent waits for workers to exit before SIGKILL."""

READY = b"ready\n"
SERVE = b"serve\n"


class WorkersFailed(RuntimeError):
    """A worker failed to start, or kept crashing: the replica cannot serve as configured."""


def service_info(registry: CollectorRegistry, settings: KitSettings) -> None:
    """``grpcmesh_service_info``: which service and version answer on this /metrics."""
    Info(
        "grpcmesh_service",
        "The service and version this app runs.",
        registry=registry,
    ).info({"service": settings.service_name, "version": settings.version or ""})


# --- the worker's side -----------------------------------------------------------------


class WorkerLink:
    """A worker's end of its link to the parent (a socketpair inherited as ``fd``)."""

    def __init__(self, index: int, port: int, fd: int) -> None:
        self.index, self.port, self.fd = index, port, fd
        self._serve = asyncio.Event()
        self._gone = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls) -> WorkerLink | None:
        raw = os.environ.get(WORKER_ENV)
        if not raw:
            return None
        try:
            index, port, fd = (int(part) for part in raw.split(":"))
        except ValueError:
            raise ValueError(f"{WORKER_ENV}={raw!r}: expected <index>:<port>:<fd>") from None
        return cls(index, port, fd)

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(
            sock=socket.socket(fileno=self.fd)
        )
        self._reading = asyncio.create_task(self._read(reader), name="worker-link")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                if line == SERVE:
                    self._serve.set()
        except OSError:
            pass
        finally:
            self._gone.set()

    async def ready_then_serve(self) -> None:
        """Tell the parent this worker is bound; return when it says every worker is."""
        assert self._writer is not None, "open() first"
        self._writer.write(READY)
        await self._writer.drain()
        serve, gone = asyncio.create_task(self._serve.wait()), asyncio.create_task(self.closed())
        await asyncio.wait({serve, gone}, return_when=asyncio.FIRST_COMPLETED)
        serve.cancel()
        gone.cancel()
        if not self._serve.is_set():
            raise WorkersFailed(f"worker {self.index}: the parent went away before SERVING")

    async def closed(self) -> None:
        """Returns when the parent is gone (the link reached EOF)."""
        await self._gone.wait()

    def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        if self._writer is not None:
            self._writer.close()


# --- the parent's side -----------------------------------------------------------------


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on (host, port): holds the port for the
    workers (gRPC sets SO_REUSEPORT too) and turns port 0 into a concrete one."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def worker_argv() -> list[str]:
    """This process's own command line, to run again as a worker."""
    return [sys.executable, *sys.orig_argv[1:]]


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    link: socket.socket
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.Task[None] | None = None

    def tell(self, line: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(line)


class WorkerPool:
    """The parent: starts, gates, restarts and stops ``settings.workers`` workers."""

    def __init__(self, settings: KitSettings) -> None:
        self.settings = settings
        self.count = settings.workers
        self.port = 0
        self.metrics_port = 0
        self._workers: dict[int, _Worker] = {}
        self._exits: asyncio.Queue[tuple[_Worker, int]] = asyncio.Queue()
        self._restarts: deque[float] = deque()
        self._serving = False
        self._stopping = False
        self._dir = ""

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers.values()]

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises ``WorkersFailed`` if the workers cannot serve."""
        s = self.settings
        reservation = reserve_port(s.host, s.port)
        self.port = int(reservation.getsockname()[1])
        self._dir = tempfile.mkdtemp(prefix="grpcmesh-metrics-")
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._dir)
        service_info(registry, s)
        metrics = HttpMetrics(registry)
        try:
            self.metrics_port = metrics.start(s.metrics_host, s.metrics_port)
            if s.ports_file is not None:
                s.ports_file.write_text(
                    json.dumps({"grpc": self.port, "metrics": self.metrics_port})
                )
            log.info(
                "%s: %d workers on %s:%d, metrics on %s:%d",
                s.service_name,
                self.count,
                s.host,
                self.port,
                s.metrics_host,
                self.metrics_port,
            )
            for index in range(self.count):
                await self._spawn(index)
            await self._supervise(stop)
        finally:
            self._stopping = True
            await self._stop_all()
            await asyncio.to_thread(metrics.stop)
            reservation.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _spawn(self, index: int) -> None:
        parent_end, child_end = socket.socketpair()
        env = {
            **os.environ,
            WORKER_ENV: f"{index}:{self.port}:{child_end.fileno()}",
            MULTIPROC_ENV: self._dir,
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *worker_argv(), env=env, pass_fds=(child_end.fileno(),)
            )
        finally:
            child_end.close()
        worker = _Worker(index, process, parent_end)
        worker.reader = asyncio.create_task(self._follow(worker), name=f"worker-{index}")
        self._workers[index] = worker
        log.info("worker %d started (pid %d)", index, process.pid)

    async def _follow(self, worker: _Worker) -> None:
        """Read the worker's link until it closes, then report its exit."""
        try:
            reader, worker.writer = await asyncio.open_unix_connection(sock=worker.link)
            line = await reader.readline()
            if line == READY:
                worker.ready.set()
                if self._serving and not self._stopping:
                    worker.tell(SERVE)  # a replacement: the others already serve
                await reader.read()  # EOF: the worker exited (or closed its end)
        except OSError:
            pass
        finally:
            code = await worker.process.wait()
            if worker.writer is not None:
                worker.writer.close()
            self._exits.put_nowait((worker, code))

    async def _supervise(self, stop: asyncio.Event) -> None:
        stopped = asyncio.create_task(stop.wait())
        try:
            # Start: every worker bound, or none serves.
            while not all(w.ready.is_set() for w in self._workers.values()):
                exited = asyncio.create_task(self._exits.get())
                readies = [asyncio.create_task(w.ready.wait()) for w in self._workers.values()]
                done, _ = await asyncio.wait(
                    {stopped, exited, *readies}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in (exited, *readies):
                    task.cancel()
                if stopped in done:
                    return
                if exited in done:
                    worker, code = exited.result()
                    self._forget(worker)
                    raise WorkersFailed(
                        f"worker {worker.index} exited with {code} before the app was SERVING"
                    )
            self._serving = True
            for worker in self._workers.values():
                worker.tell(SERVE)
            log.info("all %d workers serving", self.count)
            # Serve: restart what crashes, within the budget.
            while True:
                exited = asyncio.create_task(self._exits.get())
                done, _ = await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
                if stopped in done:
                    exited.cancel()
                    return
                worker, code = exited.result()
                self._forget(worker)
                log.error(
                    "worker %d (pid %d) exited with %d", worker.index, worker.process.pid, code
                )
                self._budget(worker.index)
                await self._spawn(worker.index)
        finally:
            stopped.cancel()

    def _budget(self, index: int) -> None:
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) > MAX_RESTARTS:
            raise WorkersFailed(
                f"workers crashed {len(self._restarts)} times in {RESTART_WINDOW_S:g}s; "
                f"not restarting worker {index} again"
            )

    def _forget(self, worker: _Worker) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        # Its gauges (none of the kit's are live) go; its counters stay in the sum.
        multiprocess.mark_process_dead(worker.process.pid, self._dir)

    async def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), SIGKILL any still running after the bound."""
        workers = list(self._workers.values())
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        bound = self.settings.drain_seconds + self.settings.grace_seconds + STOP_MARGIN_S
        waits = [asyncio.create_task(w.process.wait()) for w in workers]
        if waits:
            await asyncio.wait(waits, timeout=bound)
            for worker in workers:
                if worker.process.returncode is None:
                    log.error("worker %d did not stop in %gs: killing it", worker.index, bound)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            await asyncio.gather(*(w.process.wait() for w in workers))
        for worker in workers:
            if worker.reader is not None:
                await asyncio.wait({worker.reader}, timeout=1)
                worker.reader.cancel()
            worker.link.close()
            self._forget(worker)
        codes = {w.index: w.process.returncode for w in workers}
        log.info("workers stopped: %s", codes)
