"""Operator apply benchmark: N MeshServices into an emulated API, until the mesh has them all.

kmock (emulated Kubernetes API) runs in one thread, the operator (kopf + xDS control plane) in
another, each with its own event loop, as separate processes would; an ingress-gateway Envoy
subscribes to the operator's ADS server. The benchmark creates N exposed MeshServices
(``--concurrency`` at a time) and reports:

- ``registered``: every MeshService has ``Registered=True`` in its status, i.e. its owned
  objects were applied and the status written (Ready=True also needs workloads, endpoints and
  a sidecar per service, which kmock cannot provide);
- ``acked``: the gateway Envoy has ACKed a snapshot holding all N services (its ingress routes
  name every one);
- peak RSS of this process (operator, kmock and the client together, sampled every 100 ms) and
  of Envoy.

    python bench/operator_apply.py                 # N=200, ~12 min against kmock
    python bench/operator_apply.py --services 1000 --timeout 14400

Against kmock the emulator dominates: it scans every stored object on every request (measured
here: one GET takes ~4 ms with no objects, ~65 ms with 300, ~270 ms with 1000), and each
MeshService brings ~8 objects plus Events. So ``registered`` grows roughly quadratically with N
(20: ~10 s, 50: ~40 s, 200: ~700 s on 2 shared cores) and says little about the operator
itself; ``acked`` (the control-plane path: 200 in ~31 s, while kmock is saturated) and
``rebuild_mean_ms`` (~60 ms at 200) do.
1000 MeshServices need a real API server (kind) to mean anything; against kmock expect hours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import psutil

from grpcmesh_control.bootstrap import envoy_command, render_bootstrap
from grpcmesh_control.k8s_runtime import ApplyStrategy, Operator, RuntimeSettings
from grpcmesh_control.translate import NodeId, ProxyNode

NODE = "ingress~bench"
MESH_SERVICES = "/apis/grpcmesh.io/v1alpha1/namespaces/default/meshservices"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mesh_service(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": f"bench-{i}", "namespace": "default", "uid": str(uuid.uuid4())},
        "spec": {
            "grpc": {"port": 50051, "services": [f"bench.v1.Service{i}"]},
            "expose": True,
            "workload": {"image": "ghcr.io/grpcmesh/bench:0.1.0"},
        },
    }


class Background:
    """A coroutine in a thread with its own loop; ``stop`` sets the flag it watches."""

    def __init__(self, name: str) -> None:
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self._name = name
        self._thread: threading.Thread | None = None

    def start(self, main: Any) -> Any:
        def run() -> None:
            try:
                asyncio.run(main(self))
            except BaseException as exc:
                self.error = exc
                self.ready.set()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        if not self.ready.wait(30) or self.error is not None:
            raise RuntimeError(f"{self._name} did not start: {self.error}")
        return self.value

    def join(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(30)


async def serve_api(bg: Background) -> None:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        emulator.resources.load_bundled()
        emulator.resources["grpcmesh.io/v1alpha1/meshservices"] = kmock.ResourceInfo(
            kind="MeshService",
            namespaced=True,
            subresources={"status"},
            verbs={"list", "watch", "get", "create", "patch", "delete"},  # kopf watches only these
        )
        bg.value = str(emulator.url).rstrip("/")
        bg.ready.set()
        while not bg.stop.is_set():
            await asyncio.sleep(0.1)


def start_envoy(workdir: Path, xds_port: int) -> tuple[subprocess.Popen[bytes], int]:
    admin = free_port()
    node = ProxyNode(NodeId.parse(NODE), ingress_port=free_port(), bind_address="127.0.0.1")
    config = render_bootstrap(
        NODE,
        node.id.envoy_cluster,
        f"127.0.0.1:{xds_port}",
        admin,
        node_metadata=node.metadata(),
        bind_address="127.0.0.1",
    )
    path = workdir / "envoy.json"
    path.write_text(json.dumps(config))
    binary = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    log = (workdir / "envoy.log").open("wb")
    command = envoy_command(path, envoy=binary, concurrency=1, log_level="warning")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), admin


async def registered(http: aiohttp.ClientSession, api: str) -> int:
    async with http.get(api + MESH_SERVICES) as response:
        items = (await response.json(content_type=None)).get("items") or []
    return sum(
        any(
            c.get("type") == "Registered" and c.get("status") == "True"
            for c in (item.get("status") or {}).get("conditions") or []
        )
        for item in items
    )


def acked_all(op: Operator, n: int) -> bool:
    inputs = op.publisher.inputs
    if len(inputs.services) < n or op.publisher.version != inputs.version:
        return False
    node = next((s for s in op.cache.nodes() if s.node_id == NODE), None)
    snapshot = op.cache.snapshot(NODE)
    return node is not None and snapshot is not None and node.acked_snapshot == snapshot.version


async def bench(n: int, concurrency: int, timeout: float) -> dict[str, Any]:
    api_thread = Background("kmock")
    api = api_thread.start(serve_api)
    settings = RuntimeSettings(
        api_server=api,
        apply_strategy=ApplyStrategy.CREATE_OR_MERGE,
        xds_host="127.0.0.1",
        xds_port=0,
        metrics_port=None,
        liveness_endpoint=None,
        resync_interval=30.0,
        consistency_timeout=0.5,  # kmock reports no resourceVersions: kopf's waits run out
    )
    op = Operator(settings)

    async def serve_operator(bg: Background) -> None:
        await op.run(stop_flag=bg.stop, on_ready=lambda _: bg.ready.set())

    op_thread = Background("operator")
    op_thread.start(serve_operator)
    assert op.xds_port is not None
    me = psutil.Process()
    peak = {"self": me.memory_info().rss, "envoy": 0}
    with tempfile.TemporaryDirectory() as tmp:
        envoy, _ = start_envoy(Path(tmp), op.xds_port)
        envoy_ps = psutil.Process(envoy.pid)

        async def sample() -> None:
            while True:
                peak["self"] = max(peak["self"], me.memory_info().rss)
                peak["envoy"] = max(peak["envoy"], envoy_ps.memory_info().rss)
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        try:
            async with aiohttp.ClientSession() as http:
                gate = asyncio.Semaphore(concurrency)

                async def create(i: int) -> None:
                    async with gate, http.post(api + MESH_SERVICES, json=mesh_service(i)) as r:
                        assert r.status in (200, 201), await r.text()

                started = time.perf_counter()
                await asyncio.gather(*(create(i) for i in range(n)))
                created = time.perf_counter() - started
                print(f"created {n} in {created:.1f}s", file=sys.stderr)
                done: dict[str, float] = {}
                deadline = started + timeout
                while len(done) < 2:
                    now = time.perf_counter()
                    if now > deadline:
                        raise TimeoutError(f"not converged after {timeout:g}s: {sorted(done)}")
                    count = await registered(http, api) if "registered" not in done else n
                    if count == n and "registered" not in done:
                        done["registered"] = time.perf_counter() - started
                        print(f"registered after {done['registered']:.1f}s", file=sys.stderr)
                    if "acked" not in done and acked_all(op, n):
                        done["acked"] = time.perf_counter() - started
                    await asyncio.sleep(0.2)
        finally:
            sampler.cancel()
            envoy.kill()
            envoy.wait(10)
            op_thread.join()
            api_thread.join()
    value = op.metrics.registry.get_sample_value
    reconciles = sum(
        value("grpcmesh_operator_reconciles_total", {"result": r}) or 0 for r in ("ok", "error")
    )
    rebuilds = value("grpcmesh_snapshot_rebuilds_total") or 0
    return {
        "services": n,
        "reconciles": int(reconciles),
        "reconcile_mean_ms": round(
            1000
            * (value("grpcmesh_operator_reconcile_duration_seconds_sum") or 0)
            / max(reconciles, 1),
            1,
        ),
        "rebuilds": int(rebuilds),
        "rebuild_mean_ms": round(
            1000
            * (value("grpcmesh_snapshot_rebuild_duration_seconds_sum") or 0)
            / max(rebuilds, 1),
            1,
        ),
        "created_s": round(created, 2),
        "registered_s": round(done["registered"], 2),
        "acked_s": round(done["acked"], 2),
        "peak_rss_mib": round(peak["self"] / 2**20, 1),
        "envoy_peak_rss_mib": round(peak["envoy"] / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--services", type=int, default=200, help="MeshServices to apply (200)")
    parser.add_argument("--concurrency", type=int, default=20, help="creates in flight (20)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to converge (1800)")
    args = parser.parse_args(argv)
    logging.getLogger("kopf").setLevel(logging.ERROR)  # its shutdown notes are noise here
    result = asyncio.run(bench(args.services, args.concurrency, args.timeout))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
