"""Every ``retryOn`` value the CRD allows, and per-try and overall timeouts, against real Envoy.

One caller sidecar (``sidecar~caller~0``) with one backend per retry policy under test; every
backend's endpoint is the same in-process gRPC servicer, which fails each call the way the call's
metadata asks and counts the attempts it saw, server side. The caller dials the sidecar's egress
port with the backend's name as ``:authority``, as the kit's channel factory does.

Each backend serves its own gRPC service (``grpcmesh.probe.v1.<Policy>``, method ``Call``,
``NO_SIDE_EFFECTS``), declared only in a descriptor set placed beside the resources, as a
user's service would be: that the retries happen at all shows the control plane read it.

What is pinned:

- a failure with status S is retried exactly when S is in ``retryOn`` (every allowed value), and
  a retried call succeeds on its second attempt;
- a per-try timeout is retried when ``retryOn`` holds DEADLINE_EXCEEDED, and not otherwise;
- when per-try timeouts use up every attempt, the caller gets DEADLINE_EXCEEDED (not the
  UNAVAILABLE Envoy answers by default);
- when the overall timeout passes while attempts remain, the caller gets DEADLINE_EXCEEDED at the
  overall bound.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pb2

from grpcmesh_control.mesh.model import RetryOn
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

PER_TRY = 0.2
HANG = 5.0  # longer than any bound below: only Envoy ends a hanging attempt


def _slug(code: RetryOn) -> str:
    return code.value.lower().replace("_", "-")


@dataclass(frozen=True)
class Policy:
    name: str
    retry_on: tuple[RetryOn, ...]
    attempts: int = 2
    per_try_timeout: str | None = None
    timeout: str = "5s"

    @property
    def grpc_service(self) -> str:
        return f"{PROBE_PACKAGE}.{self.name.title().replace('-', '')}"

    @property
    def path(self) -> str:
        return f"/{self.grpc_service}/Call"

    def resource(self, port: int) -> dict[str, Any]:
        retries: dict[str, Any] = {
            "attempts": self.attempts,
            "retryOn": [code.value for code in self.retry_on],
        }
        if self.per_try_timeout is not None:
            retries["perTryTimeout"] = self.per_try_timeout
        return {
            "apiVersion": "grpcmesh.io/v1alpha1",
            "kind": "MeshService",
            "metadata": {"name": self.name},
            "spec": {
                "grpc": {"port": port, "services": [self.grpc_service]},
                "trafficPolicy": {"timeout": self.timeout, "retries": retries},
            },
        }


STATUS_POLICIES = [Policy(f"on-{_slug(code)}", (code,)) for code in RetryOn]
PER_TRY_DEADLINE = Policy(
    "per-try-deadline", (RetryOn.DEADLINE_EXCEEDED,), per_try_timeout=f"{int(PER_TRY * 1000)}ms"
)
PER_TRY_UNAVAILABLE = Policy(
    "per-try-unavailable", (RetryOn.UNAVAILABLE,), per_try_timeout=f"{int(PER_TRY * 1000)}ms"
)
OVERALL = Policy(
    "overall", (RetryOn.DEADLINE_EXCEEDED,), attempts=10, per_try_timeout="300ms", timeout="1s"
)
POLICIES = [*STATUS_POLICIES, PER_TRY_DEADLINE, PER_TRY_UNAVAILABLE, OVERALL]


class FlakyServicer:
    """Fails the first ``fail-times`` attempts of each call (metadata ``call-id``) with
    ``fail-code``, or hangs them when the code is ``HANG``; later attempts succeed."""

    def __init__(self) -> None:
        self.attempts: collections.Counter[str] = collections.Counter()

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        meta = {key: str(value) for key, value in context.invocation_metadata() or ()}
        call = meta["call-id"]
        self.attempts[call] += 1
        if self.attempts[call] <= int(meta.get("fail-times", "1")):
            code = meta["fail-code"]
            if code == "HANG":
                await asyncio.sleep(HANG)
            else:
                await context.abort(grpc.StatusCode[code], f"failing attempt {self.attempts[call]}")
        return b""

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        call: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(self.handle)
        return [
            grpc.method_handlers_generic_handler(p.grpc_service, {"Call": call}) for p in POLICIES
        ]


@dataclass
class Rig:
    envoy: Envoy
    egress: str
    servicer: FlakyServicer
    channels: dict[str, grpc.aio.Channel]

    async def call(
        self, policy: Policy, call_id: str, fail_code: str, fail_times: int = 1
    ) -> grpc.StatusCode:
        channel = self.channels.get(policy.name)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                self.egress, options=[("grpc.default_authority", policy.name)]
            )
            self.channels[policy.name] = channel
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(policy.path)
        metadata = (("call-id", call_id), ("fail-code", fail_code), ("fail-times", str(fail_times)))
        try:
            await stub(b"", metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    servicer = FlakyServicer()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(servicer.handlers())
    app_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    run = tmp_path / "run"
    (run / "resources").mkdir(parents=True)
    documents = [caller_resource(p.name for p in POLICIES)]
    documents += [p.resource(app_port) for p in POLICIES]
    (run / "resources" / "rig.yaml").write_text(yaml.safe_dump_all(documents))
    safe = {"Call": descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS}
    services = {p.grpc_service: safe for p in POLICIES} | {CALLER_SERVICE: {}}
    probes = probe_descriptor_set("grpcmesh/probe/v1/probe.proto", services)
    (run / "resources" / "probe.binpb").write_bytes(probes)
    write_endpoints(run, *((p.name, app_port, True) for p in POLICIES))
    node = caller_sidecar()
    rig = None
    try:
        async with (
            in_process_control_plane(run, mtls=False) as served,
            running_envoy(tmp_path, served.xds, node=node) as envoy,
        ):
            rig = Rig(envoy, f"127.0.0.1:{node.egress_port}", servicer, {})
            for policy in POLICIES:
                await poll(
                    lambda p=policy: has_healthy_host(envoy, f"{p.name}|v1", "egress"),  # type: ignore[misc]
                    f"{policy.name}'s endpoint at the caller's sidecar",
                    SERVING_TIMEOUT,
                )
            yield rig
    finally:
        for channel in rig.channels.values() if rig else ():
            await channel.close()
        await server.stop(grace=None)


async def test_a_status_is_retried_exactly_when_retry_on_holds_it(rig: Rig) -> None:
    seen = {}
    for policy in STATUS_POLICIES:
        for failure in RetryOn:
            call = f"{policy.name}/{failure.value}"
            seen[call] = (await rig.call(policy, call, failure.value), rig.servicer.attempts[call])
    expected = {
        f"{policy.name}/{failure.value}": (
            (grpc.StatusCode.OK, 2)
            if failure in policy.retry_on
            else (grpc.StatusCode[failure.value], 1)
        )
        for policy in STATUS_POLICIES
        for failure in RetryOn
    }
    assert seen == expected


async def test_a_per_try_timeout_is_retried_when_retry_on_holds_deadline_exceeded(
    rig: Rig,
) -> None:
    assert await rig.call(PER_TRY_DEADLINE, "retried", "HANG") == grpc.StatusCode.OK
    assert rig.servicer.attempts["retried"] == 2
    assert await rig.envoy.stat("cluster.per-try-deadline|v1.upstream_rq_per_try_timeout") == 1
    assert await rig.envoy.stat("cluster.per-try-deadline|v1.upstream_rq_retry") == 1

    status = await rig.call(PER_TRY_UNAVAILABLE, "not-retried", "HANG")
    assert (status, rig.servicer.attempts["not-retried"]) == (grpc.StatusCode.DEADLINE_EXCEEDED, 1)


# Envoy arms its timers from the event loop's cached time, taken when the loop woke before our
# request arrived, so a timeout can end a call a little before its length after our own start
# (CI saw 0.9989 s for 1 s).
EARLY_TIMER = 0.05


async def test_per_try_timeouts_using_up_every_attempt_end_in_deadline_exceeded(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = await rig.call(PER_TRY_DEADLINE, "exhausted", "HANG", fail_times=99)
    elapsed = loop.time() - started
    assert (status, rig.servicer.attempts["exhausted"]) == (grpc.StatusCode.DEADLINE_EXCEEDED, 3)
    assert 3 * PER_TRY - EARLY_TIMER <= elapsed < 3 * PER_TRY + 1.0


async def test_the_overall_timeout_ends_retries_with_deadline_exceeded(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = await rig.call(OVERALL, "overall", "HANG", fail_times=99)
    elapsed = loop.time() - started
    assert status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1.0 - EARLY_TIMER <= elapsed < 2.0
    # 300 ms tries (plus Envoy's 25 ms-based backoff) fit three times into the 1 s bound.
    assert 3 <= rig.servicer.attempts["overall"] <= 4
