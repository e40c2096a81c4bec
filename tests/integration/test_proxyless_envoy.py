"""Proxyless gRPC against the real control plane: the kit's channel factory, given a generated
bootstrap, dials ``xds:///slowpoke`` through grpcio's own xDS client (no egress sidecar), and
the calls land on the backend's real Envoy sidecars, with the backend's route policy.

MeshService ``caller`` (``spec.proxyless``) names backend ``slowpoke``: versions v1 (weight 75)
and v2 (25), each one replica behind its own sidecar (``sidecar~slowpoke~v1-0``, ``~v2-0``),
each an in-process gRPC server answering with its version. ``Slow`` has a 300 ms route timeout
and sleeps 3 s; ``Flaky`` (NO_SIDE_EFFECTS, retryOn UNAVAILABLE) fails each call's first
attempt; ``Echo`` answers at once; ``Refused`` has a fault that aborts every call with
RESOURCE_EXHAUSTED. What is pinned:

- a proxyless call reaches the backend through its sidecar (the sidecar counts it);
- ``Slow`` ends in DEADLINE_EXCEEDED at the route's 300 ms, not the caller's 5 s;
- ``Flaky`` succeeds on its second attempt: the route's retry policy is the client's;
- calls split between the versions by their weights;
- a route's injected abort is the client's (gRFC A33): the call never reaches a sidecar.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml
from google.protobuf import descriptor_pb2

from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_control.mesh.translate.proxyless import grpc_bootstrap
from grpcmesh_kit.channels import GRPC_XDS_BOOTSTRAP_CONFIG, ChannelFactory
from grpcmesh_kit.config import KitSettings
from tests.integration.rig import (
    CALLER_SERVICE,
    PROBE_PACKAGE,
    SERVING_TIMEOUT,
    caller_resource,
    has_healthy_host,
    probe_descriptor_set,
)
from tests.integration.test_control_plane_envoy import (
    Envoy,
    in_process_control_plane,
    poll,
    running_envoy,
)
from tests.loopback import free_port

# One rig for the module: a process has one xDS client (gRPC's, shared by every xds: channel),
# which outlives a closed channel for a while; a control plane per test would meet the last
# test's client and its cached endpoints.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

BACKEND = "slowpoke"
BACKEND_SERVICE = f"{PROBE_PACKAGE}.Slowpoke"
ROUTE_TIMEOUT = 0.3
SLEEP = 3.0
CALLER_DEADLINE = 5.0
WEIGHTS = {"v1": 75, "v2": 25}
SPLIT_CALLS = 400


class Servicer:
    """One version's app: ``Echo`` and ``Flaky`` answer with the version; ``Flaky`` fails the
    first attempt of each ``call-id`` with UNAVAILABLE; ``Slow`` sleeps ``SLEEP``."""

    def __init__(self, version: str, attempts: collections.Counter[str]) -> None:
        self.version = version
        self.attempts = attempts

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return self.version.encode()

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await asyncio.sleep(SLEEP)
        return self.version.encode()

    async def flaky(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        call = dict(context.invocation_metadata() or ())["call-id"]
        self.attempts[str(call)] += 1
        if self.attempts[str(call)] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
        return self.version.encode()

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any) -> grpc.RpcMethodHandler[bytes, bytes]:
            return grpc.unary_unary_rpc_method_handler(fn)

        methods = {
            "Echo": unary(self.echo),
            "Slow": unary(self.slow),
            "Flaky": unary(self.flaky),
            "Refused": unary(self.echo),
        }
        return grpc.method_handlers_generic_handler(BACKEND_SERVICE, methods)


def backend_resource() -> dict[str, Any]:
    return {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": BACKEND},
        "spec": {
            "grpc": {"port": free_port(), "services": [BACKEND_SERVICE]},
            "versions": [{"name": name, "weight": weight} for name, weight in WEIGHTS.items()],
            # A proxyless client speaks plaintext (gRPC's certificate providers are not wired
            # yet): with the mesh's mTLS on, its backends must accept plaintext callers.
            "mtls": {"mode": "PERMISSIVE"},
            "trafficPolicy": {"timeout": "5s"},
            "methods": [
                {"name": f"{BACKEND_SERVICE}/Slow", "timeout": f"{int(ROUTE_TIMEOUT * 1000)}ms"},
                {
                    "name": f"{BACKEND_SERVICE}/Flaky",
                    "retries": {"attempts": 2, "retryOn": ["UNAVAILABLE"]},
                },
                {
                    "name": f"{BACKEND_SERVICE}/Refused",
                    "fault": {"abort": {"grpcStatus": "RESOURCE_EXHAUSTED", "percentage": 100}},
                },
            ],
        },
    }


@dataclass
class Rig:
    channels: ChannelFactory
    sidecars: dict[str, Envoy]
    attempts: collections.Counter[str]

    async def call(self, method: str, **kwargs: Any) -> bytes:
        channel = self.channels.channel(BACKEND)
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{BACKEND_SERVICE}/{method}"
        )
        return bytes(await stub(b"", timeout=CALLER_DEADLINE, **kwargs))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    with pytest.MonkeyPatch.context() as env:
        env.delenv(GRPC_XDS_BOOTSTRAP_CONFIG, raising=False)  # the kit sets it, once
        async for made in _rig(tmp_path_factory.mktemp("proxyless")):
            yield made


async def _rig(tmp_path: Path) -> AsyncIterator[Rig]:
    attempts: collections.Counter[str] = collections.Counter()
    servers: dict[str, grpc.aio.Server] = {}
    app_ports: dict[str, int] = {}
    for version in WEIGHTS:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([Servicer(version, attempts).handler()])
        app_ports[version] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers[version] = server
    sidecar_nodes = {
        version: ProxyNode(
            NodeId.sidecar(BACKEND, f"{version}-0"),
            inbound_port=free_port(),
            egress_port=free_port(),
            app_port=app_ports[version],
            bind_address="127.0.0.1",
        )
        for version in WEIGHTS
    }
    run = tmp_path / "run"
    (run / "resources").mkdir(parents=True)
    caller = caller_resource([BACKEND])
    caller["spec"]["proxyless"] = True
    (run / "resources" / "rig.yaml").write_text(yaml.safe_dump_all([caller, backend_resource()]))
    levels = {
        "Echo": descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        "Slow": descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        "Flaky": descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        "Refused": descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    }
    probes = probe_descriptor_set(
        "grpcmesh/probe/v1/slowpoke.proto", {BACKEND_SERVICE: levels, CALLER_SERVICE: {}}
    )
    (run / "resources" / "probe.binpb").write_bytes(probes)
    endpoints = [
        {
            "service": BACKEND,
            "version": version,
            "replica": f"{version}-0",
            "address": "127.0.0.1",
            "port": node.inbound_port,
            "ready": True,
        }
        for version, node in sidecar_nodes.items()
    ]
    write_atomically(run / "endpoints.json", json.dumps({"endpoints": endpoints}))
    for version in WEIGHTS:
        (tmp_path / version).mkdir()
    factory = None
    try:
        async with (
            in_process_control_plane(run) as served,
            running_envoy(tmp_path / "v1", served.xds, node=sidecar_nodes["v1"]) as v1,
            running_envoy(tmp_path / "v2", served.xds, node=sidecar_nodes["v2"]) as v2,
        ):
            sidecars = {"v1": v1, "v2": v2}
            for version, envoy in sidecars.items():
                await poll(
                    lambda e=envoy, p=app_ports[version]: has_healthy_host(  # type: ignore[misc]
                        e, f"inbound|{p}", "egress"
                    ),
                    f"the {version} sidecar serving its app",
                    SERVING_TIMEOUT,
                )
            node = ProxyNode(NodeId.proxyless("caller", "0"))
            bootstrap = json.dumps(grpc_bootstrap(node, served.xds))
            factory = ChannelFactory(lambda: KitSettings(xds_bootstrap=bootstrap), [])
            rig = Rig(factory, sidecars, attempts)
            yield rig
    finally:
        if factory is not None:
            await factory.close()
        for server in servers.values():
            await server.stop(grace=None)


async def test_a_proxyless_call_reaches_the_service_through_its_sidecar(rig: Rig) -> None:
    assert rig.channels.route(BACKEND) == (f"xds:///{BACKEND}", None)
    answer = await rig.call("Echo", wait_for_ready=True)
    assert answer.decode() in WEIGHTS
    served = [
        await envoy.stat("http.inbound.downstream_rq_completed") for envoy in rig.sidecars.values()
    ]
    assert sum(v or 0 for v in served) >= 1


async def test_the_route_timeout_bounds_a_proxyless_call(rig: Rig) -> None:
    await rig.call("Echo", wait_for_ready=True)  # resolved and connected
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await rig.call("Slow")
    elapsed = time.monotonic() - started
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Not before the route's bound (Envoy's timers may fire a few ms early by our clock), and
    # far before the caller's own deadline.
    assert ROUTE_TIMEOUT - 0.02 <= elapsed < ROUTE_TIMEOUT + 1.0 < CALLER_DEADLINE, elapsed


async def test_the_route_retry_policy_retries_a_proxyless_call(rig: Rig) -> None:
    await rig.call("Echo", wait_for_ready=True)
    answer = await rig.call("Flaky", metadata=(("call-id", "once"),))
    assert answer.decode() in WEIGHTS
    assert rig.attempts["once"] == 2


async def test_proxyless_calls_split_by_version_weight(rig: Rig) -> None:
    await rig.call("Echo", wait_for_ready=True)
    answers = collections.Counter([(await rig.call("Echo")).decode() for _ in range(SPLIT_CALLS)])
    share = answers["v2"] / SPLIT_CALLS
    # 25 %: with 400 calls the binomial standard deviation is ~2.2 points; 5 sigma either side.
    assert set(answers) == set(WEIGHTS)
    assert 0.14 <= share <= 0.36, answers


async def _inbound_requests(rig: Rig) -> int:
    counts = [await e.stat("http.inbound.downstream_rq_total") for e in rig.sidecars.values()]
    return sum(c or 0 for c in counts)


async def test_a_route_fault_aborts_a_proxyless_call_in_the_client(rig: Rig) -> None:
    await rig.call("Echo", wait_for_ready=True)
    before = await _inbound_requests(rig)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await rig.call("Refused")
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await rig.call("Echo")  # a call that does arrive, so the count has caught up when it is read
    assert await _inbound_requests(rig) == before + 1
