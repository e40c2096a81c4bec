"""The load engine: starts calls on schedule under a concurrency cap and times them.

Generic over the call (PlaceOrder for the load generator, GetProduct for the kit-tax benchmark):
the caller passes ``call(index) -> Answer`` and gets one ``CallResult`` per call back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from grpcmesh_loadgen.schedule import intended_offset, load_mode
from grpcmesh_loadgen.stats import CLIENT_ERROR, OK, CallResult, LoadMode


@dataclass(frozen=True, slots=True)
class Answer:
    """How one call ended, as the call function saw it (the engine adds the latency)."""

    status: str = OK
    outcome: str = ""
    detail: str = ""


Call = Callable[[int], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class EngineRun:
    results: list[CallResult]
    elapsed_s: float


async def drive(
    call: Call,
    *,
    count: int,
    rate: float,
    concurrency: int,
    stop: asyncio.Event | None = None,
) -> EngineRun:
    """Run ``count`` calls and return their results in index order.

    ``stop``, when given and set, ends the run early: no call starts after it is set, the calls
    in flight finish, and only the calls that started are returned (a load that lasts as long
    as something else takes, bounded by ``count``).

    Open loop (finite ``rate``): call i is due at start + i/rate. When ``concurrency`` calls are
    already in flight a due call waits for a slot, and that wait counts in its latency, since
    latency is measured from the due time. Closed loop (``rate=inf``): a new call starts as soon
    as a slot frees up and latency is measured from its actual start.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    mode = load_mode(rate)
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(concurrency)
    results: list[CallResult | None] = [None] * count

    async def one(index: int, due: float) -> None:
        try:
            answer = await call(index)
        except Exception as exc:  # a bug in the call function must not abort the whole run
            answer = Answer(status=CLIENT_ERROR, detail=f"{type(exc).__name__}: {exc}")
        finally:
            slots.release()
        results[index] = CallResult(
            latency_s=loop.time() - due,
            status=answer.status,
            outcome=answer.outcome,
            detail=answer.detail,
        )

    async def wait(delay: float) -> None:
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    start = loop.time()
    async with asyncio.TaskGroup() as tasks:
        for index in range(count):
            if mode is LoadMode.OPEN:
                due = start + intended_offset(index, rate)
                delay = due - loop.time()
                if delay > 0:
                    await wait(delay)
                if stopped():
                    break
                await slots.acquire()
            else:
                await slots.acquire()
                due = loop.time()
            if stopped():
                slots.release()
                break
            tasks.create_task(one(index, due))
    elapsed = loop.time() - start
    return EngineRun(results=[r for r in results if r is not None], elapsed_s=elapsed)
