"""The engine's scheduling, with plain coroutines standing in for RPCs."""

from __future__ import annotations

import asyncio
import math

import pytest

from grpcmesh_loadgen.engine import Answer, drive
from grpcmesh_loadgen.stats import CLIENT_ERROR


async def test_open_loop_starts_calls_on_schedule_not_earlier() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def call(index: int) -> Answer:
        starts.append(loop.time())
        return Answer()

    before = loop.time()
    run = await drive(call, count=10, rate=50.0, concurrency=4)
    assert len(run.results) == 10
    for i, started in enumerate(starts):
        assert started >= before + i / 50.0 - 0.002  # loop timers may fire up to ~1 ms early
    assert run.elapsed_s >= 9 / 50.0


async def test_slow_answers_do_not_delay_the_schedule_so_latency_grows() -> None:
    # One slot, 100/s asked, 30 ms per call: the server keeps up with a third of the rate. An
    # engine that timed from the actual send would report ~30 ms for every call (coordinated
    # omission); timed from the intended send, the queue shows: call i waits ~20 ms * i more.
    async def call(index: int) -> Answer:
        await asyncio.sleep(0.03)
        return Answer()

    run = await drive(call, count=10, rate=100.0, concurrency=1)
    latencies = [r.latency_s for r in run.results]
    assert latencies[0] < 0.15  # the first call did not queue
    assert latencies[-1] >= 0.03 * 10 - 9 / 100.0 - 0.01  # ~0.21 s
    assert latencies == sorted(latencies)


async def test_closed_loop_times_from_the_actual_send() -> None:
    async def call(index: int) -> Answer:
        await asyncio.sleep(0.02)
        return Answer()

    run = await drive(call, count=20, rate=math.inf, concurrency=2)
    # Timed from the scheduled start (all at once), the last pair would show ~0.2 s.
    assert max(r.latency_s for r in run.results) < 0.12
    assert run.elapsed_s >= 10 * 0.02  # 20 calls, 2 at a time


async def test_concurrency_cap_is_respected() -> None:
    in_flight = peak = 0

    async def call(index: int) -> Answer:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return Answer()

    await drive(call, count=40, rate=2000.0, concurrency=3)
    assert peak == 3


async def test_a_raising_call_is_recorded_and_the_run_goes_on() -> None:
    async def call(index: int) -> Answer:
        if index == 2:
            raise RuntimeError("bug")
        return Answer(outcome=str(index))

    run = await drive(call, count=5, rate=math.inf, concurrency=2)
    assert [r.status for r in run.results] == ["OK", "OK", CLIENT_ERROR, "OK", "OK"]
    assert run.results[2].detail == "RuntimeError: bug"
    assert [r.outcome for r in run.results] == ["0", "1", "", "3", "4"]


@pytest.mark.parametrize(
    ("count", "rate", "concurrency", "message"),
    [(-1, 1.0, 1, "count"), (1, 0.0, 1, "rate"), (1, 1.0, 0, "concurrency")],
)
async def test_rejects_bad_parameters(
    count: int, rate: float, concurrency: int, message: str
) -> None:
    async def call(index: int) -> Answer:
        return Answer()

    with pytest.raises(ValueError, match=message):
        await drive(call, count=count, rate=rate, concurrency=concurrency)


@pytest.mark.parametrize("rate", [50.0, math.inf])
async def test_stop_ends_the_run_and_the_calls_in_flight_finish(rate: float) -> None:
    stop = asyncio.Event()
    finished: list[int] = []

    async def call(index: int) -> Answer:
        if index == 4:
            stop.set()
        await asyncio.sleep(0.02)
        finished.append(index)
        return Answer(outcome=str(index))

    run = await asyncio.wait_for(drive(call, count=10_000, rate=rate, concurrency=2, stop=stop), 5)
    # Calls 0..4 started before the stop; with a free slot, one more may have (closed loop).
    assert [r.outcome for r in run.results] == [str(i) for i in range(len(run.results))]
    assert 5 <= len(run.results) <= 6
    assert sorted(finished) == list(range(len(run.results)))
