"""kopf's peering rule as the operator's own writers apply it, and the setting that turns
peering on (pure: the peering itself runs on the real control plane in
tests/cluster/test_operator_peering.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from grpcmesh_control.cluster.controller import RuntimeSettings
from grpcmesh_control.cluster.controller.peering import peering_active

PEERING = "grpcmesh"


def test_peering_is_off_unless_named() -> None:
    assert RuntimeSettings.from_env({}).peering is None  # standalone: local and dev
    settings = RuntimeSettings.from_env(
        {"GRPCMESH_PEERING": PEERING, "GRPCMESH_PEERING_PRIORITY": "5"}
    )
    assert (settings.peering, settings.peering_priority) == (PEERING, 5)


NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def record(priority: int, seen_ago: float = 0.0, lifetime: int = 60) -> dict[str, Any]:
    seen = NOW - timedelta(seconds=seen_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("peers", "active"),
    [
        ({}, False),  # not registered yet: kopf is not handling events either
        ({"me": record(10)}, True),
        ({"me": record(10), "other": record(5)}, True),
        ({"me": record(10), "other": record(20)}, False),
        ({"me": record(10), "other": record(10)}, False),  # equal priorities all pause
        ({"me": record(10), "other": record(20, seen_ago=120)}, True),  # a dead peer
        ({"me": record(10), "gone": None}, True),  # a record kopf deleted
    ],
)
def test_the_resync_pauses_with_kopf(peers: dict[str, Any], active: bool) -> None:
    """The operator's own writers (resync, status follower) follow kopf's peering rule."""
    assert peering_active(peers, 10, NOW) is active
