"""Fault injection (``trafficPolicy.fault``, ``spec.methods[].fault``) measured through real
Envoy: the injected abort rate and delay rate come out within a binomial tolerance, aborted
calls never reach the server, delayed calls take the delay, and a method's own fault replaces
or turns off the service's.

The rig: one caller sidecar whose backend ``faulty`` (gRPC service
``grpcmesh.probe.v1.Faulty``, methods ``Call``, ``Slow``, ``Calm``, from a descriptor set
beside the resources) is an in-process servicer counting what reaches it.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pb2

from tests.integration.rig import (
    CALLER_SERVICE,
    PROBE_PACKAGE,
    SERVING_TIMEOUT,
    caller_resource,
    caller_sidecar,
    has_healthy_host,
    probe_descriptor_set,
)
from tests.integration.test_control_plane_envoy import (
    Envoy,
    in_process_control_plane,
    poll,
    running_envoy,
    write_endpoints,
)

pytestmark = pytest.mark.slow

SERVICE = f"{PROBE_PACKAGE}.Faulty"
METHODS = ("Call", "Slow", "Calm")
CALLS = 400
CONCURRENCY = 20
ABORT_PERCENT = 20.0
DELAY_PERCENT = 25.0
DELAY = 0.25
SLOW_DELAY = 0.3
TIMER_SLACK = 0.01  # Envoy's timers fire on a millisecond-granular clock


def faulty_resource(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": "faulty"},
        "spec": {
            "grpc": {"port": port, "services": [SERVICE]},
            "trafficPolicy": {
                "fault": {
                    "abort": {"grpcStatus": "RESOURCE_EXHAUSTED", "percentage": ABORT_PERCENT},
                    "delay": {"fixedDelay": f"{int(DELAY * 1000)}ms", "percentage": DELAY_PERCENT},
                }
            },
            "methods": [
                {
                    "name": f"{SERVICE}/Slow",
                    "fault": {
                        "delay": {"fixedDelay": f"{int(SLOW_DELAY * 1000)}ms", "percentage": 100}
                    },
                },
                {"name": f"{SERVICE}/Calm", "fault": {}},
            ],
        },
    }


@dataclass
class Rig:
    envoy: Envoy
    channel: grpc.aio.Channel
    reached: collections.Counter[str]

    async def calls(self, method: str, count: int) -> list[tuple[grpc.StatusCode, float]]:
        """``count`` calls, ``CONCURRENCY`` at a time: (status, seconds) of each."""
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            f"/{SERVICE}/{method}"
        )
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one() -> tuple[grpc.StatusCode, float]:
            async with gate:
                started = loop.time()
                try:
                    await stub(b"", timeout=10)
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), loop.time() - started
                return grpc.StatusCode.OK, loop.time() - started

        return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    reached: collections.Counter[str] = collections.Counter()

    def answer(method: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            reached[method] += 1
            return b""

        return grpc.unary_unary_rpc_method_handler(handle)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {m: answer(m) for m in METHODS})]
    )
    app_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    run = tmp_path / "run"
    (run / "resources").mkdir(parents=True)
    documents = [caller_resource(["faulty"]), faulty_resource(app_port)]
    (run / "resources" / "rig.yaml").write_text(yaml.safe_dump_all(documents))
    unknown = descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN  # no retries to blur the rates
    faulty = probe_descriptor_set(
        "grpcmesh/probe/v1/faulty.proto",
        {SERVICE: dict.fromkeys(METHODS, unknown), CALLER_SERVICE: {}},
    )
    (run / "resources" / "faulty.binpb").write_bytes(faulty)
    write_endpoints(run, ("faulty", app_port, True))
    node = caller_sidecar()
    try:
        async with (
            in_process_control_plane(run, mtls=False) as served,
            running_envoy(tmp_path, served.xds, node=node) as envoy,
            grpc.aio.insecure_channel(
                f"127.0.0.1:{node.egress_port}", options=[("grpc.default_authority", "faulty")]
            ) as channel,
        ):
            await poll(
                lambda: has_healthy_host(envoy, "faulty|v1", "egress"),
                "faulty's endpoint at the caller's sidecar",
                SERVING_TIMEOUT,
            )
            yield Rig(envoy, channel, reached)
    finally:
        await server.stop(grace=None)


def within(count: int, percent: float, total: int = CALLS) -> bool:
    """``count`` of ``total`` is a plausible draw at ``percent``: within 4.5 standard
    deviations of the binomial mean (a false failure about once in 150 000 runs)."""
    p = percent / 100
    return abs(count - total * p) <= 4.5 * math.sqrt(total * p * (1 - p))


async def test_injected_abort_and_delay_rates_are_the_configured_ones(rig: Rig) -> None:
    results = await rig.calls("Call", CALLS)
    aborted = [t for code, t in results if code is grpc.StatusCode.RESOURCE_EXHAUSTED]
    ok = [t for code, t in results if code is grpc.StatusCode.OK]
    assert len(aborted) + len(ok) == CALLS, collections.Counter(code for code, _ in results)
    assert within(len(aborted), ABORT_PERCENT), len(aborted)
    assert rig.reached["Call"] == len(ok)  # an aborted call never reaches the server
    assert await rig.envoy.stat("http.egress.fault.aborts_injected") == len(aborted)
    # Envoy draws the delay, then the abort, independently: any call may be delayed.
    delayed = await rig.envoy.stat("http.egress.fault.delays_injected")
    assert delayed is not None and within(delayed, DELAY_PERCENT), delayed
    # ... and a delayed call took the delay: at least that many calls took that long (an upper
    # bound would measure the machine's load, not Envoy)
    slow = sum(1 for _, t in results if t >= DELAY - TIMER_SLACK)
    assert slow >= delayed, (delayed, slow)


async def test_a_methods_own_fault_replaces_the_services(rig: Rig) -> None:
    slow = await rig.calls("Slow", 20)
    assert {code for code, _ in slow} == {grpc.StatusCode.OK}, slow  # no abort: replaced
    assert min(t for _, t in slow) >= SLOW_DELAY - TIMER_SLACK
    assert await rig.envoy.stat("http.egress.fault.delays_injected") == 20
    calm = await rig.calls("Calm", 100)
    assert {code for code, _ in calm} == {grpc.StatusCode.OK}, calm
    assert rig.reached["Calm"] == 100
    # turned off: Envoy injected nothing more (its counters, not timing, on a loaded machine)
    assert await rig.envoy.stat("http.egress.fault.delays_injected") == 20
    assert await rig.envoy.stat("http.egress.fault.aborts_injected") in (0, None)
