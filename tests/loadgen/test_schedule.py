from __future__ import annotations

import math

import pytest

from grpcmesh_loadgen.schedule import intended_offset, load_mode
from grpcmesh_loadgen.stats import LoadMode


def test_finite_rate_is_open_loop_and_inf_is_closed() -> None:
    assert load_mode(50.0) is LoadMode.OPEN
    assert load_mode(math.inf) is LoadMode.CLOSED


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, -math.inf])
def test_rejects_non_positive_rates(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        load_mode(rate)


def test_open_loop_offsets_are_evenly_spaced_from_zero() -> None:
    assert [intended_offset(i, 4.0) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_offsets_depend_only_on_index_and_rate() -> None:
    # the 1000th call is due at 20 s whatever happened before it
    assert intended_offset(1000, 50.0) == pytest.approx(20.0)


def test_closed_loop_has_no_schedule() -> None:
    assert intended_offset(7, math.inf) == 0.0


def test_rejects_negative_index() -> None:
    with pytest.raises(ValueError, match="index"):
        intended_offset(-1, 1.0)
