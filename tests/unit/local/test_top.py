"""``grpcmesh top`` without Prometheus: RED per service from two scrapes of the apps (pure)."""

from __future__ import annotations

import pytest

from grpcmesh_control.local.top import red_from_scrapes

BUCKETS = (0.005, 0.01, 0.1, float("inf"))


def page(ok: float, unavailable: float, declined: float, buckets: tuple[float, ...]) -> str:
    """A kit /metrics page for one method: handled calls by code and unary buckets."""
    method = 'grpc_service="s.v1.S",grpc_method="M",grpc_type="unary"'
    lines = [
        "# TYPE grpc_server_handled_total counter",
        f'grpc_server_handled_total{{{method},grpc_code="OK"}} {ok}',
        f'grpc_server_handled_total{{{method},grpc_code="UNAVAILABLE"}} {unavailable}',
        f'grpc_server_handled_total{{{method},grpc_code="FAILED_PRECONDITION"}} {declined}',
        "# TYPE grpc_server_handling_seconds histogram",
    ]
    for le, count in zip(BUCKETS, buckets, strict=True):
        bound = "+Inf" if le == float("inf") else str(le)
        lines.append(f'grpc_server_handling_seconds_bucket{{{method},le="{bound}"}} {count}')
    lines.append(f"grpc_server_handling_seconds_count{{{method}}} {buckets[-1]}")
    lines.append(f"grpc_server_handling_seconds_sum{{{method}}} 1.0")
    return "\n".join(lines) + "\n"


def test_rates_faults_and_quantiles_come_from_the_difference_of_two_scrapes() -> None:
    before = {
        "a:1": page(10, 0, 0, (10, 10, 10, 10)),
        "b:1": page(5, 0, 0, (5, 5, 5, 5)),
    }
    # 100 more calls over both replicas in 2 s: 10 UNAVAILABLE (faults), 10 declines (not).
    after = {
        "a:1": page(50, 10, 0, (40, 50, 60, 60)),
        "b:1": page(45, 0, 10, (25, 35, 55, 55)),
    }
    [row] = red_from_scrapes(before, after, 2.0, {"a:1": "pay", "b:1": "pay"})
    assert row.service == "pay"
    assert row.rate == pytest.approx(50.0)
    assert row.error_ratio == pytest.approx(0.1)
    # 50 of the 100 calls under 5 ms, 70 under 10 ms, all under 100 ms.
    assert row.p50 == pytest.approx(0.005)
    assert row.p99 == pytest.approx(0.01 + 0.09 * (99 - 70) / 30)


def test_services_without_calls_or_scrapes_show_no_rate_and_no_quantiles() -> None:
    idle = page(3, 0, 0, (3, 3, 3, 3))
    rows = red_from_scrapes(
        {"a:1": idle}, {"a:1": idle, "b:1": idle}, 1.0, {"a:1": "x", "b:1": "y"}
    )
    assert [(r.service, r.rate, r.error_ratio, r.p50, r.p99) for r in rows] == [
        ("x", 0.0, None, None, None),
        ("y", 0.0, None, None, None),
    ]


def test_a_restarted_replica_counts_from_zero() -> None:
    [row] = red_from_scrapes(
        {"a:1": page(100, 0, 0, (100,) * 4)}, {"a:1": page(4, 0, 0, (4,) * 4)}, 2.0, {"a:1": "x"}
    )
    assert row.rate == pytest.approx(2.0)
