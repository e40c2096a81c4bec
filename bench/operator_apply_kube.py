"""Operator apply benchmark on a real control plane: N MeshServices, until all are Ready.

The sibling of ``bench.operator_apply`` (kmock), with everything it emulated made real where
this machine allows:

- **real**: Kubernetes 1.36 from ``../shared/kube`` (etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler, via ``tests/cluster/kube.py``); the operator as a
  ``grpcmesh operator`` process from the venv, with the chart's settings (native provider,
  peering through a ``ClusterKopfPeering``, 60 s resync) and the admin kubeconfig; the
  MeshServices applied with one ``kubectl apply --server-side`` of N documents, as a user would.
  The controller-manager makes the ReplicaSets, Pods and EndpointSlices, the scheduler binds.
- **stand-ins** (this process): the nodes and the sidecars. Hollow nodes cannot be used: they
  leave a pod with a native sidecar (the operator's Envoy is one) at ``Init:0/1`` forever (see
  ``../shared/kube/README.md``). So ``StandInNodes`` registers Nodes itself, keeps their Leases
  renewed and, for each pod bound to one, does what a kubelet would report without starting a
  process: a loopback pod IP of its own, every container running and ready. At that moment the
  pod's sidecar connects: a ``bench._mesh.Sidecar`` (an ADS client, node
  ``sidecar~<service>~<pod>``, its own connection, ACKing every response).

Reported (seconds from the start of ``kubectl apply``): when every MeshService is
``Registered=True`` and ``Ready=True`` (watched), and on the way: Deployments created and
available, Pods created, scheduled and ready; the CPU seconds the operator, kube-apiserver,
kube-controller-manager, kube-scheduler, etcd and this process used over that interval; the
operator's peak RSS (``VmHWM``) and its own metrics (reconciles, snapshot rebuilds).

    python -m bench.operator_apply_kube                    # N=200
    python -m bench.operator_apply_kube --services 1000

The controller-manager and scheduler run with kube-up's client rate limits (``kube-up``
passes no ``--kube-api-qps``/``--kube-api-burst``, so their defaults hold: 20/30 for the
controller-manager, 50/100 for the scheduler); kube-up has no setting to raise them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench._mesh import Sidecar, free_port, load_average, mesh_service
from grpcmesh_control.cluster.objects.names import LABEL_SERVICE
from tests.cluster.kube import KubeCluster, wait_until

REPO = Path(__file__).resolve().parents[1]
MESH_SERVICES = "/apis/grpcmesh.io/v1alpha1/namespaces/{ns}/meshservices"
DEPLOYMENTS = "/apis/apps/v1/namespaces/{ns}/deployments"
PODS = "/api/v1/namespaces/{ns}/pods"
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
NODES = "/api/v1/nodes"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
PEERINGS = "/apis/kopf.dev/v1/clusterkopfpeerings"
PODS_PER_NODE = 110  # the kubelet's default --max-pods
LEASE_SECONDS = 40
MERGE = "application/merge-patch+json"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")


def now_rfc3339(micro: bool = False) -> str:
    stamp = datetime.now(UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


class Api:
    """A small JSON client of the API server with the admin token: the stand-ins' own, apart
    from the operator's client (a fault there must not hide itself), and with watches."""

    def __init__(self, cluster: KubeCluster) -> None:
        self._server = cluster.server
        self._ssl = ssl.create_default_context(cafile=str(cluster.ca_file))
        self._headers = {"Authorization": f"Bearer {cluster.admin_token}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=50),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            read_bufsize=2**20,  # a watch event is one line; pods and Deployments run to KBs
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Api as an async context manager"
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        content_type: str = "application/json",
        ok: tuple[int, ...] = (200, 201),
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        async with self.session.request(
            method,
            self._server + path,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type},
            params=params,
        ) as response:
            text = await response.text()
            if response.status not in ok:
                raise RuntimeError(f"{method} {path} -> {response.status}: {text[:500]}")
            value = json.loads(text) if text else {}
            return value if isinstance(value, dict) else {}

    async def text(self, path: str) -> str:
        async with self.session.get(self._server + path) as response:
            if response.status != 200:
                raise RuntimeError(f"GET {path} -> {response.status}")
            return await response.text()

    async def watch(self, path: str, handle: Callable[[str, dict[str, Any]], None]) -> None:
        """List, then watch from that version, forever: ``handle(type, object)`` for every
        object listed (``ADDED``) and every event. A watch the server ends is resumed; one
        whose version has expired (410) starts again from a fresh list."""
        version: str | None = None
        while True:
            if version is None:
                listing = await self.call("GET", path)
                version = str(listing["metadata"]["resourceVersion"])
                for item in listing.get("items") or []:
                    handle("ADDED", item)
            params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
            async with self.session.get(self._server + path, params=params) as response:
                if response.status == 410:
                    version = None
                    continue
                if response.status != 200:
                    raise RuntimeError(f"watch {path} -> {response.status}")
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    body = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if body.get("code") == 410:
                            version = None
                        break
                    version = str(body["metadata"]["resourceVersion"])
                    if event.get("type") != "BOOKMARK":
                        handle(str(event["type"]), body)


def node_object(name: str, pods: int) -> dict[str, Any]:
    """A Node as a kubelet registers it: Ready, with room for ``pods`` pods."""
    stamp = now_rfc3339()
    room = {"cpu": "1000", "memory": "4Ti", "pods": str(pods), "ephemeral-storage": "1Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "status": {
            "capacity": room,
            "allocatable": room,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "a benchmark stand-in: pods are reported, not run",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
        },
    }


def running_status(pod: Mapping[str, Any], pod_ip: str, host_ip: str) -> dict[str, Any]:
    """The ``status`` a kubelet reports for ``pod`` once every container runs and is ready:
    native sidecars (init containers with ``restartPolicy: Always``) running too, other init
    containers completed."""
    stamp = now_rfc3339()
    spec = pod.get("spec") or {}

    def running(container: Mapping[str, Any]) -> dict[str, Any]:
        name = str(container["name"])
        return {
            "name": name,
            "image": container.get("image", ""),
            "imageID": container.get("image", ""),
            "containerID": f"bench://{pod['metadata']['uid']}/{name}",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": stamp}},
        }

    def completed(container: Mapping[str, Any]) -> dict[str, Any]:
        # A kubelet reports a completed init container ready (exit code 0), not started.
        status = running(container) | {"started": False}
        status["state"] = {
            "terminated": {
                "exitCode": 0,
                "reason": "Completed",
                "startedAt": stamp,
                "finishedAt": stamp,
            }
        }
        return status

    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": stamp}
        for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
    ]
    conditions += [
        c
        for c in (pod.get("status") or {}).get("conditions") or []
        if c.get("type") == "PodScheduled"
    ]
    return {
        "phase": "Running",
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": stamp,
        "conditions": conditions,
        "initContainerStatuses": [
            running(c) if c.get("restartPolicy") == "Always" else completed(c)
            for c in spec.get("initContainers") or []
        ],
        "containerStatuses": [running(c) for c in spec.get("containers") or []],
    }


class ApplyWith(StrEnum):
    KUBECTL = "kubectl"
    """One ``kubectl apply --server-side -f`` of all N documents (kubectl sends them one by
    one)."""
    API = "api"
    """Server-side apply PATCHes straight to the API server, ``APPLY_CONCURRENCY`` at a time."""


APPLY_CONCURRENCY = 20


async def kubectl_apply(cluster: KubeCluster, manifest: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        cluster.kubectl_path,
        f"--kubeconfig={cluster.kubeconfig}",
        "apply",
        "--server-side",
        "--field-manager=bench",
        "-f",
        str(manifest),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, errors = await process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"kubectl apply failed: {errors.decode()}")


async def api_apply(api: Api, docs: list[dict[str, Any]]) -> None:
    gate = asyncio.Semaphore(APPLY_CONCURRENCY)

    async def apply(doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        path = f"{MESH_SERVICES.format(ns=meta['namespace'])}/{meta['name']}"
        async with gate:
            await api.call(
                "PATCH",
                path,
                doc,
                content_type="application/apply-patch+yaml",  # JSON is YAML
                params={"fieldManager": "bench"},
            )

    await asyncio.gather(*(apply(doc) for doc in docs))


async def api_server_requests(api: Api) -> collections.defaultdict[str, float]:
    """The API server's own count and total seconds of requests so far, by verb and
    resource (``apiserver_request_total``, ``apiserver_request_duration_seconds_sum``)."""
    text = await api.text("/metrics")
    found: collections.defaultdict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name not in ("apiserver_request", "apiserver_request_duration_seconds"):
            continue
        for sample in family.samples:
            if sample.name not in (
                "apiserver_request_total",
                "apiserver_request_duration_seconds_sum",
            ):
                continue
            labels = sample.labels
            if labels.get("verb") == "WATCH":
                continue  # a watch lasts as long as it is open
            what = labels.get("resource", "") + (
                "/" + labels["subresource"] if labels.get("subresource") else ""
            )
            unit = "n" if sample.name.endswith("_total") else "s"
            found[f"{unit} {labels.get('verb')} {what}"] += sample.value
    return found


def request_table(
    before: Mapping[str, float], after: Mapping[str, float], top: int = 15
) -> list[str]:
    """``verb resource: count, seconds``, the busiest first (by seconds)."""
    rows = []
    for key in {k[2:] for k in after}:
        count = after.get(f"n {key}", 0) - before.get(f"n {key}", 0)
        seconds = after.get(f"s {key}", 0) - before.get(f"s {key}", 0)
        if count:
            rows.append((seconds, f"{key}: {int(count)} in {seconds:.1f} s"))
    rows.sort(reverse=True)
    return [row for _, row in rows[:top]]


@dataclass
class StandInNodes:
    """``count`` Nodes whose kubelet is this object (see the module's docstring).

    ``on_pod_started(pod, pod_ip)`` runs for each pod bound to one of them, just before its
    status says Running and Ready (a real sidecar connects before its pod is ready);
    ``on_pod_stopped(pod)`` when one is deleted, which is then confirmed as a kubelet does
    (deleted with grace 0). Status writes are ``concurrency`` at a time, with no client rate
    limit (a kubelet's is 50 per second per node)."""

    api: Api
    prefix: str
    count: int
    pods_per_node: int
    on_pod_started: Callable[[Mapping[str, Any], str], None]
    on_pod_stopped: Callable[[Mapping[str, Any]], None]
    concurrency: int = 10
    names: list[str] = field(init=False)
    stats: collections.Counter[str] = field(default_factory=collections.Counter)
    _started: dict[str, str] = field(default_factory=dict)  # pod uid -> pod IP
    _issued: dict[str, int] = field(default_factory=dict)  # node -> pod IPs handed out
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _gate: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.names = [f"{self.prefix}-{i}" for i in range(self.count)]
        self._gate = asyncio.Semaphore(self.concurrency)

    async def register(self) -> None:
        for name in self.names:
            await self.api.call("POST", NODES, node_object(name, self.pods_per_node))
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": name,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": now_rfc3339(micro=True),
                },
            }
            await self.api.call("POST", LEASES, lease)

    async def wait_schedulable(self, timeout: float = 60.0) -> None:
        """Until the node controller has lifted the ``not-ready`` taint that admission puts on
        a new Node."""
        deadline = time.monotonic() + timeout
        while True:
            listing = await self.api.call("GET", NODES)
            tainted = [
                item["metadata"]["name"]
                for item in listing.get("items") or []
                if item["metadata"]["name"] in self.names and (item.get("spec") or {}).get("taints")
            ]
            if not tainted:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes still tainted after {timeout:g}s: {tainted}")
            await asyncio.sleep(0.5)

    async def heartbeat(self) -> None:
        """Renew the Leases (the node controller's liveness signal) every 10 s, as a kubelet."""
        while True:
            await asyncio.sleep(10)
            for name in self.names:
                renew = {"spec": {"renewTime": now_rfc3339(micro=True)}}
                await self.api.call("PATCH", f"{LEASES}/{name}", renew, content_type=MERGE)

    async def remove(self) -> None:
        """Delete the Nodes and their Leases (the pod GC then removes pods bound to them)."""
        for name in self.names:
            for path in (f"{NODES}/{name}", f"{LEASES}/{name}"):
                await self.api.call("DELETE", path, ok=(200, 202, 404))

    def pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        """A pod watch event (any pod: those bound to other nodes are ignored)."""
        node = (pod.get("spec") or {}).get("nodeName")
        if node not in self.names:
            return
        meta = pod["metadata"]
        uid = str(meta["uid"])
        if kind == "DELETED":
            if self._started.pop(uid, None) is not None:
                self.on_pod_stopped(pod)
            return
        if meta.get("deletionTimestamp"):
            if self._started.pop(uid, None) is not None:
                self.on_pod_stopped(pod)
            self._spawn(self._confirm_deletion(pod))
            return
        if uid in self._started:
            return
        issued = self._issued.get(node, 0)
        self._issued[node] = issued + 1
        index = self.names.index(node)
        # 127.<10+node>.x.y as the hollow nodes' pod IPs, .0 and .1 left out.
        pod_ip = f"127.{10 + index}.{(issued + 2) // 256}.{(issued + 2) % 256}"
        self._started[uid] = pod_ip
        self.on_pod_started(pod, pod_ip)
        self._spawn(self._report_running(pod, pod_ip))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # counted and shown; the run goes on (and may time out)
                self.stats[f"kubelet_{type(exc).__name__}"] += 1
                print(f"stand-in kubelet: {exc}", file=sys.stderr)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_running(self, pod: Mapping[str, Any], pod_ip: str) -> None:
        meta = pod["metadata"]
        path = f"{PODS.format(ns=meta['namespace'])}/{meta['name']}/status"
        async with self._gate:
            await self.api.call(
                "PATCH",
                path,
                {"status": running_status(pod, pod_ip, "127.0.0.1")},
                content_type=MERGE,
            )
        self.stats["pods_reported"] += 1

    async def _confirm_deletion(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"{PODS.format(ns=meta['namespace'])}/{meta['name']}"
        async with self._gate:
            await self.api.call("DELETE", path, {"gracePeriodSeconds": 0}, ok=(200, 202, 404, 409))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


class Sidecars:
    """One ``Sidecar`` stand-in per started pod, each on its own connection to the operator's
    ADS server, as the Envoys in pods would be."""

    def __init__(self, xds: str) -> None:
        self.xds = xds
        self.stats: collections.Counter[str] = collections.Counter()
        self._running: dict[str, tuple[grpc.aio.Channel, asyncio.Task[None]]] = {}

    def start(self, pod: Mapping[str, Any], _pod_ip: str) -> None:
        meta = pod["metadata"]
        service = (meta.get("labels") or {}).get(LABEL_SERVICE)
        if not service:
            return
        channel = grpc.aio.insecure_channel(self.xds)
        sidecar = Sidecar(channel, service, self.stats, replica=str(meta["name"]))
        self._running[str(meta["uid"])] = (channel, asyncio.create_task(sidecar.run()))
        self.stats["sidecars"] += 1

    def stop(self, pod: Mapping[str, Any]) -> None:
        found = self._running.pop(str(pod["metadata"]["uid"]), None)
        if found is not None:
            channel, task = found
            task.cancel()
            asyncio.get_running_loop().create_task(channel.close())

    async def close(self) -> None:
        for channel, task in self._running.values():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await channel.close()
        self._running.clear()


READY_ENDPOINTS = "services with a ready endpoint"
UNTARGETED = {READY_ENDPOINTS}  # how many Services a MeshService makes is the operator's choice


class Progress:
    """Milestones, from watch events: for each, the names that meet it now, when the count
    first reached the target (one per MeshService; not for ``UNTARGETED``) and when it last
    grew (seconds from ``start``)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.start = time.monotonic()
        self.meeting: dict[str, set[str]] = collections.defaultdict(set)
        self.reached: dict[str, float] = {}
        self.last_growth: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.degraded: collections.Counter[str] = collections.Counter()
        """Degraded=True statuses seen (every write of one counts), by reason and message."""

    def restart(self) -> None:
        self.start = time.monotonic()
        self.reached.clear()
        self.last_growth.clear()

    def mark(self, milestone: str, name: str, met: bool) -> None:
        names = self.meeting[milestone]
        if met and name not in names:
            names.add(name)
            elapsed = time.monotonic() - self.start
            self.last_growth[milestone] = elapsed
            counted = milestone not in UNTARGETED
            if counted and len(names) >= self.target and milestone not in self.reached:
                self.reached[milestone] = elapsed
            self.changed.set()
        elif not met:
            names.discard(name)

    def count(self, milestone: str) -> int:
        return len(self.meeting[milestone])

    def mesh_service(self, kind: str, body: Mapping[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        true = {
            c.get("type")
            for c in (body.get("status") or {}).get("conditions") or []
            if c.get("status") == "True"
        }
        for condition in ("Registered", "Ready"):
            self.mark(f"meshservices {condition}", name, kind != "DELETED" and condition in true)
        for c in (body.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Degraded" and c.get("status") == "True":
                # Digits out, so one cause counts once however many objects it names.
                cause = re.sub(r"[0-9]+", "N", str(c.get("message")))[:200]
                self.degraded[f"{c.get('reason')}: {cause}"] += 1

    def deployment(self, kind: str, body: Mapping[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        status = body.get("status") or {}
        wanted = int((body.get("spec") or {}).get("replicas", 1))
        current = status.get("observedGeneration") == body["metadata"].get("generation")
        available = current and int(status.get("availableReplicas") or 0) >= wanted
        self.mark("deployments created", name, kind != "DELETED")
        self.mark("deployments available", name, kind != "DELETED" and available)

    def pod(self, kind: str, body: Mapping[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        alive = kind != "DELETED" and not body["metadata"].get("deletionTimestamp")
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (body.get("status") or {}).get("conditions") or []
        )
        self.mark("pods created", name, alive)
        self.mark("pods scheduled", name, alive and bool((body.get("spec") or {}).get("nodeName")))
        self.mark("pods ready", name, alive and ready)

    def endpoint_slice(self, kind: str, body: Mapping[str, Any]) -> None:
        service = (body["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        if not service:
            return
        ready = any((e.get("conditions") or {}).get("ready") for e in body.get("endpoints") or [])
        self.mark(READY_ENDPOINTS, str(service), kind != "DELETED" and ready)


@dataclass
class OperatorProcess:
    """``grpcmesh operator`` from this venv, with the chart's settings, on loopback ports."""

    process: subprocess.Popen[bytes]
    xds_port: int
    metrics_port: int
    log: Path

    @classmethod
    def start(cls, cluster: KubeCluster, peering: str, log: Path) -> OperatorProcess:
        xds_port, metrics_port, health_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            # As the chart's Deployment sets them (charts/grpcmesh/templates/operator/), but
            # every listener on loopback.
            "GRPCMESH_NAMESPACE": "grpcmesh-system",
            "GRPCMESH_PROVIDER": "native",
            "GRPCMESH_XDS_ADDRESS": f"127.0.0.1:{xds_port}",
            "GRPCMESH_XDS_HOST": "127.0.0.1",
            "GRPCMESH_XDS_PORT": str(xds_port),
            "GRPCMESH_METRICS_HOST": "127.0.0.1",
            "GRPCMESH_METRICS_PORT": str(metrics_port),
            "GRPCMESH_LIVENESS": f"http://127.0.0.1:{health_port}/healthz",
            "GRPCMESH_SERVICE_MONITOR": "false",
            "GRPCMESH_RESYNC_SECONDS": "60",
            "GRPCMESH_MISSING_BACKENDS": "warn",
            "GRPCMESH_PEERING": peering,
            "GRPCMESH_PEERING_PRIORITY": "random",
        }
        command = [str(Path(sys.executable).parent / "grpcmesh"), "operator", "--log-level", "info"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
        started = cls(process, xds_port, metrics_port, log)
        try:
            wait_until(started.active, "the operator to become the active replica", 60)
        except AssertionError:
            started.stop()
            raise AssertionError(f"the operator did not start:\n{started.log_tail()}") from None
        return started

    def _get(self, path: str) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"the operator exited ({self.process.returncode}):\n{self.log_tail()}"
            )
        try:
            url = f"http://127.0.0.1:{self.metrics_port}{path}"
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, OSError):
            return None

    def active(self) -> bool:
        return self._get("/readyz") == "active\n"

    def metrics(self) -> dict[str, float]:
        """The operator's counters and histogram sums that say where its time went."""
        text = self._get("/metrics") or ""
        values: dict[str, float] = collections.defaultdict(float)
        wanted = {
            "grpcmesh_operator_reconciles_total",
            "grpcmesh_operator_reconcile_duration_seconds_sum",
            "grpcmesh_operator_reconcile_duration_seconds_count",
            "grpcmesh_snapshot_rebuilds_total",
            "grpcmesh_snapshot_rebuild_duration_seconds_sum",
            "grpcmesh_operator_events_dropped_total",
        }
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    values[sample.name] += sample.value
        return dict(values)

    def peak_rss_mib(self) -> float:
        """``VmHWM``: the process's peak resident set, kept by the kernel."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return math.nan

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cpu_seconds(processes: Mapping[str, psutil.Process]) -> dict[str, float]:
    """User + system seconds of each; ``kubectl``: of this process's reaped children."""
    seconds = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
    own = psutil.Process().cpu_times()
    seconds["kubectl"] = own.children_user + own.children_system
    return seconds


async def measure(
    cluster: KubeCluster,
    services: int,
    namespace: str,
    workdir: Path,
    *,
    timeout: float,
    apply_with: ApplyWith = ApplyWith.KUBECTL,
    pods_per_node: int = PODS_PER_NODE,
) -> dict[str, Any]:
    """Apply ``services`` MeshServices into ``namespace`` (an empty one) of a running control
    plane with our CRDs, and measure until all are Ready or ``timeout`` runs out. Leaves the
    cluster as found apart from the namespace's objects (stand-in Nodes and the peering are
    removed)."""
    nodes = max(1, math.ceil(services / pods_per_node))
    peering = f"{namespace}-bench"
    cluster.apply(
        [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}]
    )
    docs = [mesh_service(i, namespace) for i in range(services)]
    manifest = workdir / "meshservices.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    operator = OperatorProcess.start(cluster, peering, workdir / "operator.log")
    progress = Progress(services)
    sidecars = Sidecars(f"127.0.0.1:{operator.xds_port}")
    watches: list[asyncio.Task[None]] = []
    try:
        async with Api(cluster) as api:
            kubelet = StandInNodes(
                api,
                f"{namespace}-node",
                nodes,
                pods_per_node,
                on_pod_started=sidecars.start,
                on_pod_stopped=sidecars.stop,
            )
            await kubelet.register()
            try:
                await kubelet.wait_schedulable()

                def pod_event(kind: str, body: dict[str, Any]) -> None:
                    progress.pod(kind, body)
                    kubelet.pod_event(kind, body)

                handlers: dict[str, Callable[[str, dict[str, Any]], None]] = {
                    MESH_SERVICES: progress.mesh_service,
                    DEPLOYMENTS: progress.deployment,
                    PODS: pod_event,
                    ENDPOINT_SLICES: progress.endpoint_slice,
                }
                watches = [
                    asyncio.create_task(api.watch(path.format(ns=namespace), handle))
                    for path, handle in handlers.items()
                ]
                watches.append(asyncio.create_task(kubelet.heartbeat()))
                await asyncio.sleep(0.5)  # the watches open before the first object
                pids = cluster.component_pids()
                processes = {
                    "operator": psutil.Process(operator.process.pid),
                    **{name: psutil.Process(pids[name]) for name in COMPONENTS},
                    "bench": psutil.Process(),
                }
                requests_before = await api_server_requests(api)
                before = cpu_seconds(processes)
                progress.restart()
                if apply_with is ApplyWith.KUBECTL:
                    await kubectl_apply(cluster, manifest)
                else:
                    await api_apply(api, docs)
                applied_s = time.monotonic() - progress.start
                goal = {"meshservices Registered", "meshservices Ready"}
                last_report = 0.0
                while not goal <= progress.reached.keys():
                    elapsed = time.monotonic() - progress.start
                    if elapsed > timeout:
                        print(f"not converged after {timeout:g}s", file=sys.stderr)
                        break
                    if elapsed - last_report >= 10:
                        last_report = elapsed
                        counts = {m: progress.count(m) for m in sorted(progress.meeting)}
                        print(f"{elapsed:.0f}s: {counts}", file=sys.stderr)
                    progress.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(progress.changed.wait(), 1.0)
                after = cpu_seconds(processes)
                requests = request_table(requests_before, await api_server_requests(api))
                metrics = operator.metrics()
                peak_rss_mib = operator.peak_rss_mib()
            finally:
                for task in watches:
                    task.cancel()
                for task in watches:
                    with contextlib.suppress(BaseException):
                        await task
                await kubelet.stop()
                await sidecars.close()
                operator.stop()
                with contextlib.suppress(Exception):
                    await kubelet.remove()
                with contextlib.suppress(Exception):
                    await api.call("DELETE", f"{PEERINGS}/{peering}", ok=(200, 404))
    finally:
        operator.stop()
    reconciles = metrics.get("grpcmesh_operator_reconciles_total", 0)
    rebuilds = metrics.get("grpcmesh_snapshot_rebuilds_total", 0)
    return {
        "services": services,
        "nodes": nodes,
        "applied_with": apply_with.value,
        "applied_s": round(applied_s, 1),
        "milestones_s": {
            m: round(s, 1) for m, s in sorted(progress.reached.items(), key=lambda i: i[1])
        },
        "last_growth_s": {
            m: round(s, 1) for m, s in sorted(progress.last_growth.items(), key=lambda i: i[1])
        },
        "counts": {m: progress.count(m) for m in sorted(progress.meeting)},
        "converged": goal <= progress.reached.keys(),
        "cpu_s": {name: round(after[name] - before[name], 1) for name in before},
        "operator_peak_rss_mib": peak_rss_mib,
        "operator": {
            "reconciles": int(reconciles),
            "reconcile_mean_ms": round(
                1000
                * metrics.get("grpcmesh_operator_reconcile_duration_seconds_sum", 0)
                / max(reconciles, 1)
            ),
            "rebuilds": int(rebuilds),
            "rebuild_mean_ms": round(
                1000
                * metrics.get("grpcmesh_snapshot_rebuild_duration_seconds_sum", 0)
                / max(rebuilds, 1)
            ),
            "events_dropped": int(metrics.get("grpcmesh_operator_events_dropped_total", 0)),
        },
        "api_server_requests": requests,
        "degraded_statuses_seen": dict(progress.degraded.most_common(5)),
        "stand_ins": dict(kubelet.stats + sidecars.stats),
        "load_average": load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--services", type=int, default=200, help="MeshServices to apply (200)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to converge (900)")
    parser.add_argument(
        "--apply",
        choices=[a.value for a in ApplyWith],
        default=ApplyWith.KUBECTL.value,
        help="kubectl apply --server-side (default), or concurrent server-side apply PATCHes",
    )
    args = parser.parse_args(argv)
    print(f"$ {shlex.join(['python', '-m', 'bench.operator_apply_kube', *sys.argv[1:]])}")
    workdir = Path(tempfile.mkdtemp(prefix="grpcmesh-bench-"))
    cluster = KubeCluster.start(hollow_nodes=0, state=workdir / "kube")
    try:
        cluster.install_crds()
        cluster.create_namespace("bench")
        result = asyncio.run(
            measure(
                cluster,
                args.services,
                "bench",
                workdir,
                timeout=args.timeout,
                apply_with=ApplyWith(args.apply),
            )
        )
    finally:
        cluster.stop()
    result["workdir"] = str(workdir)
    print(json.dumps(result, indent=2))
    return 0 if result["converged"] else 1


if __name__ == "__main__":
    sys.exit(main())
