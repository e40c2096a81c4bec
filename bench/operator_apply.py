"""Operator apply benchmark: N MeshServices into an emulated API, until all are Ready.

Two processes, so the operator's memory can be told apart from the emulated cluster's:

- this one runs the operator (kopf + xDS control plane, in its own thread and event loop) and
  the benchmark's client (creates N exposed MeshServices, ``--concurrency`` at a time, and polls
  their status with a LIST), and starts an ingress-gateway Envoy subscribed to the operator;
- a child (``--cluster``) plays the cluster: kmock (the emulated Kubernetes API over real HTTP)
  and, as kmock has no controllers or pods, stand-ins for them. When a MeshService's Deployment
  appears, they roll it out (``status.updatedReplicas``/``availableReplicas`` = replicas), write
  an EndpointSlice with one ready endpoint for its per-version Service, and connect a sidecar
  stand-in: an ADS client (SotW, node ``sidecar~<service>~0``) that subscribes as Envoy does
  (CDS and LDS, then EDS and RDS by name) and ACKs whatever it is sent.

Reported (seconds from the first create):

- ``registered_s``: every MeshService has ``Registered=True``;
- ``ready_s``: every MeshService has ``Ready=True`` (rolled out, a ready endpoint, its sidecar
  ACKed the snapshot it is served);
- ``acked_s``: the gateway Envoy has ACKed a snapshot holding all N services;
- peak RSS of the operator process, of the cluster process and of Envoy (sampled every 100 ms).

    python -m bench.operator_apply                      # N=200
    python -m bench.operator_apply --services 1000

The emulated API is kmock with three fixes for scale (``Emulator``): its request record keeps
only the requests being served (kmock scans the record on every request, so each request cost
O(requests served so far)), named objects are looked up by key instead of a scan of every stored
object, and LIST honours ``labelSelector`` (kmock ignores it). A LIST still compares every stored
object's key, as an API server's cache filters every object of the kind.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
import grpc
import kmock
import psutil

from bench._mesh import Sidecar, free_port, mesh_service, running_envoys
from grpcmesh_control.cluster.controller import ApplyStrategy, Operator, RuntimeSettings
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_control.mesh.translate.bootstrap import render_bootstrap

REPO = Path(__file__).resolve().parents[1]
NODE = "ingress~bench"
MESH_SERVICES = "/apis/grpcmesh.io/v1alpha1/namespaces/default/meshservices"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
SERVICE_LABEL = "grpcmesh.io/service"
STREAMS_PER_CHANNEL = 1  # a connection each, as sidecars in pods have


# --- the cluster process: kmock, controller stand-ins, sidecar stand-ins -------------------------


class InFlight:
    """kmock's request record, holding only the requests being served (see ``Emulator``)."""

    def __init__(self) -> None:
        self._serving: dict[int, Any] = {}
        self.served = 0

    def append(self, request: Any) -> None:
        self._serving[id(request)] = request
        self.served += 1

    def discard(self, request: Any) -> None:
        self._serving.pop(id(request), None)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._serving.values())

    def __len__(self) -> int:
        return self.served  # kmock numbers requests with len(): keep the numbers increasing


class Emulator(kmock.KubernetesEmulator):
    """kmock 0.8 with three fixes that make it scale to thousands of objects.

    **The request record.** kmock appends every request to ``_requests``
    (``RawHandler.__call__``) and then finds its reaction with ``request in payload._source``
    (``RawHandler._handle``), which walks the whole record (``Root.__iter__`` yields
    ``_requests``) through each reaction's filters: every request costs O(requests served so
    far), ~0.2 ms per recorded request (a GET takes ~200 ms after 1000 creates). The record only
    serves test assertions. A bounded ``deque`` is not enough: the request being matched must
    still be in it, and the emulator awaits (its lock, the watch bus) between recording and
    matching, so as many requests as there are open connections may be recorded meanwhile; a
    bound of 64 still costs ~20 ms per request, 1024 ~200 ms. So the record keeps exactly the
    requests being served (appended by kmock, discarded here when served; open watches stay):
    with the fixes below a GET takes ~0.8 ms after 500 to 4000 creates. ``InFlight`` replaces
    the one attribute both places read.

    **Object look-ups.** kmock finds the objects a request names by comparing every stored
    object's key (~2 us each: ~20 ms per request at 10000 objects), and lists the known
    resources by walking them too. Here a named object is one dict look-up, a LIST compares
    plain tuples, and the resources of created objects are remembered as they are created.

    **Label selectors.** kmock ignores ``labelSelector`` on LIST, so each of the operator's
    prune listings would return every object of the kind (O(N) JSON per reconcile, O(N^2) in
    all); an API server filters them. Equality-based selectors (``k=v``, ``k==v``, ``k!=v``,
    ``k``, ``!k``) are applied here.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        assert isinstance(self._requests, list)  # kmock 0.8's record, replaced here
        self.in_flight = InFlight()
        self._requests = self.in_flight  # type: ignore[assignment]
        self.created_resources: set[Any] = set()

    async def _handle(self, request: Any) -> Any:
        if request.action == kmock.action.CREATE and request.resource is not None:
            self.created_resources.add(request.resource)
        try:
            return await super()._handle(request)
        finally:
            self.in_flight.discard(request)

    def _get_resources(self) -> list[Any]:
        # kmock: the scaffold's (declared and reaction-derived) plus those of stored objects.
        declared = kmock.KubernetesScaffold._get_resources(self)
        return list(set(declared) | self.created_resources)

    def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:
        # The emulator's private ``__get_objs`` (name-mangled), same semantics, no full scan
        # for a named object.
        objects: dict[tuple[Any, str | None, str], Any] = self._objects._objects
        resource, namespace, name = request.resource, request.namespace, request.name
        if resource is None:
            return []
        if name is not None and namespace is not None:
            found = objects.get((resource, namespace, name))
            return [] if found is None else [found]
        wanted = (resource.group, resource.version, resource.plural)
        return [
            obj
            for (res, ns, n), obj in objects.items()
            if (res.group, res.version, res.plural) == wanted
            and (ns == namespace if strict else namespace is None or ns == namespace)
            and (name is None or n == name)
        ]

    async def _serve_list(self, request: Any) -> Any:
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector and isinstance(listing, dict):
            listing["items"] = [
                item
                for item in listing["items"]
                if selects(selector, (item.get("metadata") or {}).get("labels") or {})
            ]
        return listing


def selects(selector: str, labels: Mapping[str, str]) -> bool:
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term and term not in labels:
            return False
    return True


async def play_controllers(
    api: str, xds: str, stats: collections.Counter[str], tasks: set[asyncio.Task[None]]
) -> None:
    """The Deployment and EndpointSlice controllers and the pods' sidecars, for every
    Deployment the operator creates (watched from the start, before any MeshService exists)."""
    channels: list[grpc.aio.Channel] = []
    gate = asyncio.Semaphore(10)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def roll_out(deployment: dict[str, Any]) -> None:
            metadata = deployment["metadata"]
            name, service = metadata["name"], metadata["labels"][SERVICE_LABEL]
            replicas = int((deployment.get("spec") or {}).get("replicas", 1))
            rolled_out = {
                "status": {
                    "observedGeneration": metadata.get("generation", 1),
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                }
            }
            endpoint_slice = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-bench",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "grpc", "port": 15006, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.0.0.1"], "conditions": {"ready": True, "terminating": False}}
                ],
            }
            merge = {"Content-Type": "application/merge-patch+json"}
            async with gate:
                url = f"{api}{DEPLOYMENTS}/{name}"
                async with http.patch(url, json=rolled_out, headers=merge) as response:
                    assert response.status == 200, await response.text()
                async with http.post(api + ENDPOINT_SLICES, json=endpoint_slice) as response:
                    assert response.status in (200, 201), await response.text()
            if len(channels) * STREAMS_PER_CHANNEL <= stats["sidecars"]:
                channels.append(grpc.aio.insecure_channel(xds))
            stats["sidecars"] += 1
            await Sidecar(channels[-1], service, stats).run()

        async def controller(deployment: dict[str, Any]) -> None:
            try:
                await roll_out(deployment)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # counted and shown, the run goes on (and may time out)
                stats[f"controller_{type(exc).__name__}"] += 1
                print(f"cluster: {deployment['metadata']['name']}: {exc!r}", file=sys.stderr)

        seen: set[str] = set()
        try:
            while True:  # a watch that ends is resumed (kmock replays every object: seen)
                async with http.get(api + DEPLOYMENTS, params={"watch": "true"}) as response:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        body = event.get("object") or {}
                        name = str((body.get("metadata") or {}).get("name"))
                        if event.get("type") in ("ADDED", "MODIFIED") and name not in seen:
                            seen.add(name)
                            task = asyncio.create_task(controller(body))
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
        finally:
            for channel in channels:
                await channel.close()


async def serve_cluster(stdin: IO[str], stdout: IO[str]) -> None:
    stats: collections.Counter[str] = collections.Counter()
    async with Emulator() as emulator, kmock.Server(emulator):
        emulator.resources.load_bundled()
        emulator.resources["grpcmesh.io/v1alpha1/meshservices"] = kmock.ResourceInfo(
            kind="MeshService",
            namespaced=True,
            subresources={"status"},
            verbs={"list", "watch", "get", "create", "patch", "delete"},  # kopf watches only these
        )
        api = str(emulator.url).rstrip("/")
        loop = asyncio.get_running_loop()

        async def tidy() -> None:
            # Reactions keep the requests they served, and the emulator every request error
            # (404s included): memory only, but it grows with the run. Count and drop.
            while True:
                await asyncio.sleep(2)
                for error in emulator.errors:
                    stats[
                        "unmatched"
                        if isinstance(error, NotImplementedError)
                        else type(error).__name__
                    ] += 1
                emulator.errors.clear()
                for payload in emulator._payloads:
                    payload._requests.clear()

        print(json.dumps({"api": api}), file=stdout, flush=True)
        xds = json.loads(await loop.run_in_executor(None, stdin.readline))["xds"]
        tasks: set[asyncio.Task[None]] = set()
        background = [
            asyncio.create_task(tidy()),
            asyncio.create_task(play_controllers(api, xds, stats, tasks)),
        ]
        await asyncio.sleep(0.5)  # let the watch open before the first MeshService
        print(json.dumps({"watching": True}), file=stdout, flush=True)
        # Stop in two steps, so no stand-in sees the operator go and the operator keeps its API
        # until it has stopped: first the stand-ins (reporting what they saw), then the API.
        await loop.run_in_executor(None, stdin.readline)
        for task in [*background, *tasks]:
            task.cancel()
        for task in [*background, *tasks]:
            with contextlib.suppress(BaseException):
                await task
        for error in emulator.errors:
            stats[
                "unmatched" if isinstance(error, NotImplementedError) else type(error).__name__
            ] += 1
        print(json.dumps(dict(stats)), file=stdout, flush=True)
        await loop.run_in_executor(None, stdin.readline)


# --- the operator process ---------------------------------------------------------------------


class Cluster:
    """The child process playing the cluster; talks JSON lines over its stdin/stdout."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.operator_apply", "--cluster"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.api: str = self._read()["api"]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the cluster process exited ({self.process.wait()})")
        value = json.loads(line)
        assert isinstance(value, dict)
        return value

    def _write(self, value: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(value) + "\n")
        self.process.stdin.flush()

    def start_controllers(self, xds_port: int) -> None:
        self._write({"xds": f"127.0.0.1:{xds_port}"})
        self._read()

    def stop_stand_ins(self) -> dict[str, Any]:
        self._write("stop")
        return self._read()

    def stop(self) -> None:
        self._write("exit")
        self.process.wait(30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Background:
    """A coroutine in a thread with its own loop; ``stop`` sets the flag it watches."""

    def __init__(self, name: str) -> None:
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._name = name
        self._thread: threading.Thread | None = None

    def start(self, main: Any) -> None:
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

    def join(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(30)


def gateway_bootstrap(xds_port: int) -> dict[str, Any]:
    """The ingress gateway Envoy's bootstrap, subscribed to the operator's ADS server."""
    node = ProxyNode(NodeId.parse(NODE), ingress_port=free_port(), bind_address="127.0.0.1")
    return render_bootstrap(
        NODE,
        node.id.envoy_cluster,
        f"127.0.0.1:{xds_port}",
        free_port(),
        node_metadata=node.metadata(),
        bind_address="127.0.0.1",
    )


async def conditions(http: aiohttp.ClientSession, api: str) -> collections.Counter[str]:
    """How many MeshServices have each condition True."""
    async with http.get(api + MESH_SERVICES) as response:
        items = (await response.json(content_type=None)).get("items") or []
    return collections.Counter(
        c.get("type")
        for item in items
        for c in (item.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    )


def acked_all(op: Operator, n: int) -> bool:
    inputs = op.publisher.inputs
    if len(inputs.services) < n or op.publisher.version != inputs.version:
        return False
    node = next((s for s in op.cache.nodes() if s.node_id == NODE), None)
    snapshot = op.cache.snapshot(NODE)
    return node is not None and snapshot is not None and node.acked_snapshot == snapshot.version


async def bench(n: int, concurrency: int, timeout: float) -> dict[str, Any]:
    cluster = Cluster()
    settings = RuntimeSettings(
        api_server=cluster.api,
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
    processes = {"operator": psutil.Process(), "cluster": psutil.Process(cluster.process.pid)}
    peak = dict.fromkeys(["operator", "cluster", "envoy"], 0)
    done: dict[str, float] = {}
    counts: collections.Counter[str] = collections.Counter()
    try:
        op_thread.start(serve_operator)
        assert op.xds_port is not None
        cluster.start_controllers(op.xds_port)
        with (
            tempfile.TemporaryDirectory() as tmp,
            running_envoys({"gateway": gateway_bootstrap(op.xds_port)}, Path(tmp)) as envoys,
        ):
            processes["envoy"] = psutil.Process(envoys["gateway"].pid)

            async def sample() -> None:
                while True:
                    for name, process in processes.items():
                        peak[name] = max(peak[name], process.memory_info().rss)
                    await asyncio.sleep(0.1)

            sampler = asyncio.create_task(sample())
            try:
                async with aiohttp.ClientSession() as http:
                    gate = asyncio.Semaphore(concurrency)

                    async def create(i: int) -> None:
                        body = mesh_service(i)
                        body["metadata"]["uid"] = str(uuid.uuid4())  # kmock assigns none
                        async with gate, http.post(api + MESH_SERVICES, json=body) as r:
                            assert r.status in (200, 201), await r.text()

                    api = cluster.api
                    started = time.perf_counter()
                    await asyncio.gather(*(create(i) for i in range(n)))
                    done["created"] = time.perf_counter() - started
                    print(f"created {n} in {done['created']:.1f}s", file=sys.stderr)
                    deadline = started + timeout
                    interval = min(1.0, max(0.2, n / 1000))
                    last_report = 0.0
                    while not {"registered", "ready", "acked"} <= done.keys():
                        now = time.perf_counter()
                        if now > deadline:
                            print(f"not converged after {timeout:g}s", file=sys.stderr)
                            break
                        counts = await conditions(http, api)
                        elapsed = time.perf_counter() - started
                        for key, condition in (("registered", "Registered"), ("ready", "Ready")):
                            if key not in done and counts[condition] >= n:
                                done[key] = elapsed
                                print(f"{key} after {elapsed:.1f}s", file=sys.stderr)
                        if "acked" not in done and acked_all(op, n):
                            done["acked"] = elapsed
                            print(f"gateway acked after {elapsed:.1f}s", file=sys.stderr)
                        if elapsed - last_report > 30:
                            last_report = elapsed
                            print(f"{elapsed:.0f}s: {dict(counts)}", file=sys.stderr)
                        await asyncio.sleep(interval)
            finally:
                sampler.cancel()
                cpu = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
                cluster_stats = cluster.stop_stand_ins()
                op_thread.join()
        cluster.stop()
    finally:
        cluster.kill()
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
        **{f"{key}_s": round(seconds, 2) for key, seconds in done.items()},
        "converged": {"registered", "ready", "acked"} <= done.keys(),
        "conditions_true": dict(counts),
        "operator_peak_rss_mib": round(peak["operator"] / 2**20, 1),
        "cluster_peak_rss_mib": round(peak["cluster"] / 2**20, 1),
        "envoy_peak_rss_mib": round(peak["envoy"] / 2**20, 1),
        "cpu_s": {name: round(seconds, 1) for name, seconds in cpu.items()},
        "cluster": cluster_stats,
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--services", type=int, default=200, help="MeshServices to apply (200)")
    parser.add_argument("--concurrency", type=int, default=20, help="creates in flight (20)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to converge (1800)")
    parser.add_argument("--cluster", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.getLogger("kopf").setLevel(logging.ERROR)  # its shutdown notes are noise here
    if args.cluster:
        asyncio.run(serve_cluster(sys.stdin, sys.stdout))
        return 0
    result = asyncio.run(bench(args.services, args.concurrency, args.timeout))
    print(json.dumps(result, indent=2))
    return 0 if result["converged"] else 1


if __name__ == "__main__":
    sys.exit(main())
