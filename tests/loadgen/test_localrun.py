"""The local launcher, with stand-in services (tests/loadgen/fake_service.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcmesh_loadgen.localrun import LocalRun, ServiceSpec, StartupError

from .procs import alive, pids_with_env, wait_gone

FAKE = str(Path(__file__).with_name("fake_service.py"))


def fake(name: str, behaviour: str = "ok", **kw: object) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        command=(sys.executable, FAKE),
        env={"FAKE_BEHAVIOUR": behaviour},
        **kw,  # type: ignore[arg-type]
    )


def env_of(log: Path) -> dict[str, str]:
    env: dict[str, str] = json.loads(log.read_text().splitlines()[0])
    return env


async def test_starts_in_order_passes_targets_and_config_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    async with LocalRun(tmp_path) as run:
        a = await run.start(fake("a"))
        b = await run.start(fake("b", targets=("a",), config={"seed_stock": {"sku-0001": 5}}))
        assert list(run.services) == ["a", "b"]
        async with grpc.aio.insecure_channel(b.grpc_address) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        env = env_of(b.log_path)
        assert json.loads(env["GRPCMESH_TARGETS"]) == {"a": a.grpc_address}
        assert env["GRPCMESH_PORT"] == "0"
        assert env["GRPCMESH_DB_PATH"] == str(tmp_path / "b.db")
        assert yaml.safe_load(Path(env["GRPCMESH_CONFIG_FILE"]).read_text()) == {
            "seed_stock": {"sku-0001": 5}
        }
        assert "GRPCMESH_CONFIG_FILE" not in env_of(a.log_path)
        codes = await run.stop()
    assert codes == {"a": 0, "b": 0}
    assert not alive(a.pid)
    assert not alive(b.pid)
    assert "stopped cleanly" in b.log_path.read_text()


async def test_a_crashing_service_is_named_with_its_log_tail(tmp_path: Path) -> None:
    async with LocalRun(tmp_path) as run:
        with pytest.raises(StartupError) as caught:
            await run.start(fake("payments", "crash"))
    message = str(caught.value)
    assert "service 'payments' did not start: exited with code 3" in message
    assert "fake service: boom" in message


async def test_a_service_that_never_serves_times_out_and_is_stopped(tmp_path: Path) -> None:
    async with LocalRun(tmp_path, startup_timeout_s=1.0) as run:
        with pytest.raises(StartupError, match=r"not SERVING within 1s.*NOT_SERVING"):
            await run.start(fake("slow", "never_serving"))
        assert run.services == {}
    assert pids_with_env(str(tmp_path)) == []


async def test_sigkill_after_the_stop_bound(tmp_path: Path) -> None:
    async with LocalRun(tmp_path, stop_timeout_s=0.5) as run:
        stubborn = await run.start(fake("stubborn", "ignore_sigterm"))
        codes = await run.stop()
    assert codes == {"stubborn": -signal.SIGKILL}
    assert not alive(stubborn.pid)


async def test_unknown_target_is_refused(tmp_path: Path) -> None:
    async with LocalRun(tmp_path) as run:
        with pytest.raises(ValueError, match="targets not started yet: nope"):
            await run.start(fake("b", targets=("nope",)))


async def test_cancelling_the_owner_stops_the_services(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def owner() -> None:
        async with LocalRun(tmp_path) as run:
            await run.start(fake("a"))
            started.set()
            await asyncio.Event().wait()  # until cancelled, like a Ctrl-C

    task = asyncio.create_task(owner())
    await asyncio.wait_for(started.wait(), 30)
    assert len(pids_with_env(str(tmp_path))) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pids_with_env(str(tmp_path)) == []


LAUNCHER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from grpcmesh_loadgen.localrun import LocalRun, ServiceSpec

    async def main() -> None:
        run = LocalRun(Path(sys.argv[1]))
        svc = await run.start(ServiceSpec("a", (sys.executable, sys.argv[2])))
        print(svc.pid, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_services_die_with_a_killed_launcher(tmp_path: Path) -> None:
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LAUNCHER, str(tmp_path), FAKE, stdout=asyncio.subprocess.PIPE
    )
    assert launcher.stdout is not None
    try:
        line = await asyncio.wait_for(launcher.stdout.readline(), 30)
        pid = int(line)
        assert alive(pid)
    finally:
        os.kill(launcher.pid, signal.SIGKILL)  # no chance to clean up
        await launcher.wait()
    assert await asyncio.to_thread(wait_gone, [pid]) == []


async def test_start_all_waits_for_targets_and_starts_the_rest_together(tmp_path: Path) -> None:
    specs = [fake("a"), fake("b"), fake("c", targets=("a", "b"))]
    async with LocalRun(tmp_path) as run:
        started = await run.start_all(specs)
        assert [s.name for s in started] == ["a", "b", "c"]
        env = env_of(started[2].log_path)
        assert json.loads(env["GRPCMESH_TARGETS"]) == {
            "a": started[0].grpc_address,
            "b": started[1].grpc_address,
        }


async def test_start_all_reports_the_failed_service_and_stops_the_others(tmp_path: Path) -> None:
    async with LocalRun(tmp_path) as run:
        with pytest.raises(StartupError, match="service 'b' did not start"):
            await run.start_all([fake("a"), fake("b", "crash"), fake("c", targets=("a", "b"))])
    assert pids_with_env(str(tmp_path)) == []


async def test_start_all_refuses_unknown_targets(tmp_path: Path) -> None:
    async with LocalRun(tmp_path) as run:
        with pytest.raises(ValueError, match="neither running nor listed: b"):
            await run.start_all([fake("b", targets=("nope",))])
