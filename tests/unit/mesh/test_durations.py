"""CRD durations: Go-style spellings to exact timedeltas and back."""

from __future__ import annotations

from datetime import timedelta

import pytest

from grpcmesh_control.mesh.model import format_duration, parse_duration
from grpcmesh_control.mesh.model.durations import MAX_DURATION


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("2s", timedelta(seconds=2)),
        ("0.1s", timedelta(milliseconds=100)),
        ("1.5s", timedelta(milliseconds=1500)),
        ("1m30s", timedelta(seconds=90)),
        ("2h", timedelta(hours=2)),
        ("0s", timedelta(0)),
    ],
)
def test_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "2 s", "-1s", "1d", "s", "1.s"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(seconds=2), "2s"),
        (timedelta(microseconds=1500), "0.0015s"),
        (timedelta(0), "0s"),
    ],
)
def test_format_round_trips(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_the_longest_go_duration_is_the_limit() -> None:
    # The API server's CEL rules parse durations as Go does; past 2**63 - 1 ns they fail there.
    assert parse_duration(MAX_DURATION) == timedelta(microseconds=(2**63 - 1) // 1000 + 1)
    with pytest.raises(ValueError, match="is longer than"):
        parse_duration("2562047h47m16.854775808s")
    with pytest.raises(ValueError, match="is longer than"):
        parse_duration("99999999999h")  # once an OverflowError out of timedelta


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.0001ms", timedelta(microseconds=1)), ("1.0000001s", timedelta(microseconds=1_000_001))],
)
def test_a_sub_microsecond_remainder_rounds_up(text: str, expected: timedelta) -> None:
    # So a positive duration (Go and the API server see 100ns) never becomes 0 here.
    assert parse_duration(text) == expected
