"""Kubernetes Events the operator cannot post in time are dropped, counted, and logged once
per hundred rather than once each (a burst of 1000 services overflowed the queue)."""

from __future__ import annotations

import logging

import pytest

from grpcmesh_control.cluster.controller import Operator, RuntimeSettings
from grpcmesh_control.cluster.controller.events import EventPoster


async def test_a_full_event_queue_drops_counts_and_logs_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    op = Operator(RuntimeSettings())
    op.events = EventPoster(op.operator_metrics, queue_size=1)
    op.events.open()  # as run() does
    body = {"metadata": {"name": "payments", "namespace": "default"}}
    with caplog.at_level(logging.WARNING, logger="grpcmesh_control.cluster.controller.events"):
        for _ in range(251):
            op.post_event(body, "Normal", "Reconciled", "Ready=True (Serving)")
    assert op.events.pending == 1
    dropped = op.metrics.registry.get_sample_value("grpcmesh_operator_events_dropped_total")
    assert dropped == 250
    warnings = [r.getMessage() for r in caplog.records if "event queue full" in r.getMessage()]
    assert len(warnings) == 3  # the 1st, 101st and 201st drop
    assert warnings[-1].startswith("event queue full: 201 Events dropped so far")
