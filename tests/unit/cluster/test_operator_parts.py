"""The parts ``Operator`` is made of, each on its own: the event poster logs what the API
refuses instead of losing it silently; the status follower coalesces a burst of marks into one
reconcile per MeshService and reconciles nothing while this replica is not the active one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import prometheus_client
import pytest

from grpcmesh_control.cluster.controller.client import ApiError, KubeClient
from grpcmesh_control.cluster.controller.events import EventPoster
from grpcmesh_control.cluster.controller.metrics import OperatorMetrics
from grpcmesh_control.cluster.controller.status_follower import Key, StatusFollower

BODY = {"metadata": {"name": "payments", "namespace": "shop"}}


class RefusingClient:
    def __init__(self) -> None:
        self.calls = 0

    async def create_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime
    ) -> None:
        self.calls += 1
        raise ApiError(403, 'events is forbidden: User "grpcmesh" cannot create events')


async def test_an_event_the_api_refuses_is_logged_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poster = EventPoster(OperatorMetrics(prometheus_client.CollectorRegistry()))
    poster.open()
    client = RefusingClient()
    for _ in range(3):
        poster.post(BODY, "Warning", "ApplyFailed", "boom")
    with caplog.at_level(logging.WARNING, logger="grpcmesh_control.cluster.controller.events"):
        task = asyncio.create_task(poster.run(cast(KubeClient, client)))
        async with asyncio.timeout(5):
            while poster.refused < 3:
                await asyncio.sleep(0.01)
        task.cancel()
    assert client.calls == 3
    [logged] = [r.getMessage() for r in caplog.records]  # once per hundred, not per Event
    assert logged.startswith("Event ApplyFailed on shop/payments not posted (1 so far): 403")


async def test_a_burst_of_marks_is_one_reconcile_per_service_and_none_while_standby() -> None:
    follower = StatusFollower(debounce_s=0.05)
    follower.open()
    reconciled: list[Key] = []
    active = True
    done = asyncio.Event()

    async def is_active() -> bool:
        return active

    async def reconcile(key: Key) -> None:
        reconciled.append(key)
        if len(reconciled) == 2:
            done.set()

    task = asyncio.create_task(follower.run(is_active, reconcile))
    for _ in range(50):
        follower.mark(("shop", "payments"))
        follower.mark(("shop", "orders"))
    async with asyncio.timeout(5):
        await done.wait()
    assert sorted(reconciled) == [("shop", "orders"), ("shop", "payments")]

    active = False
    follower.mark(("shop", "catalog"))
    flag = follower._flag
    assert flag is not None
    async with asyncio.timeout(5):
        while not flag.is_set():  # the mark arrived (it is applied in the loop, soon)
            await asyncio.sleep(0.005)
        while flag.is_set() or follower._stale:  # and was consumed, after the debounce
            await asyncio.sleep(0.005)
    for _ in range(3):
        await asyncio.sleep(0)  # let the pass that consumed it finish
    task.cancel()
    assert ("shop", "catalog") not in reconciled
    follower.close()
    follower.mark(("shop", "late"))  # after close: ignored, no error
