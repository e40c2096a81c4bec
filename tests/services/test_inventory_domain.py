"""Unit tests of inventory's pure rules: validation and the reservation state machine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from grpcmesh_inventory import domain
from grpcmesh_inventory.domain import (
    AdjustCommand,
    LineItem,
    Reservation,
    ReservationState,
    StockLevel,
)
from grpcmesh_kit import Aborted, FailedPrecondition, InvalidArgument


@dataclass(frozen=True)
class Item:
    product_id: str
    quantity: int


def test_valid_reserve_is_normalised_by_product_id() -> None:
    command = domain.validate_reserve("o-1", [Item("sku-2", 1), Item("sku-1", 3)])
    assert command.order_id == "o-1"
    assert command.items == (LineItem("sku-1", 3), LineItem("sku-2", 1))


@pytest.mark.parametrize(
    ("order_id", "items", "field"),
    [
        ("", [Item("a", 1)], "order_id"),
        ("o" * 129, [Item("a", 1)], "order_id"),
        ("o", [], "items"),
        ("o", [Item(f"p{i}", 1) for i in range(101)], "items"),
        ("o", [Item("a", 1), Item("", 1)], "items[1].product_id"),
        ("o", [Item("a", 1), Item("b", 0)], "items[1].quantity"),
        ("o", [Item("a", 1001)], "items[0].quantity"),
        ("o", [Item("a", -1)], "items[0].quantity"),
        ("o", [Item("a", 1), Item("b", 1), Item("a", 2)], "items[2].product_id"),
        ("o", [Item("x" * 129, 1)], "items[0].product_id"),
    ],
)
def test_invalid_reserve_names_the_field(order_id: str, items: list[Item], field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.validate_reserve(order_id, items)
    assert exc.value.field == field


def test_reserve_limits_are_inclusive() -> None:
    items = [Item(f"p{i:03d}", 1000) for i in range(100)]
    assert len(domain.validate_reserve("o" * 128, items).items) == 100


def test_repeat_reserve_with_same_items_is_a_no_op() -> None:
    command = domain.validate_reserve("o", [Item("a", 1), Item("b", 2)])
    existing = Reservation("o", ReservationState.RESERVED, command.items)
    assert domain.repeat_reserve(existing, command) is ReservationState.RESERVED


def test_repeat_reserve_with_different_items_is_invalid() -> None:
    existing = Reservation("o", ReservationState.RESERVED, (LineItem("a", 1),))
    with pytest.raises(InvalidArgument) as exc:
        domain.repeat_reserve(existing, domain.validate_reserve("o", [Item("a", 2)]))
    assert exc.value.field == "items"


@pytest.mark.parametrize("state", [ReservationState.RELEASED, ReservationState.COMMITTED])
def test_reserve_after_release_or_commit_aborts(state: ReservationState) -> None:
    command = domain.validate_reserve("o", [Item("a", 1)])
    with pytest.raises(Aborted):
        domain.repeat_reserve(Reservation("o", state, command.items), command)


def test_check_availability_names_the_product() -> None:
    domain.check_availability(LineItem("a", 2), 2)
    with pytest.raises(FailedPrecondition, match="'a'"):
        domain.check_availability(LineItem("a", 3), 2)


@pytest.mark.parametrize("state", [None, ReservationState.RESERVED, ReservationState.RELEASED])
def test_release_transitions(state: ReservationState | None) -> None:
    assert domain.release_transition(state) is ReservationState.RELEASED


def test_release_after_commit_is_refused() -> None:
    with pytest.raises(FailedPrecondition):
        domain.release_transition(ReservationState.COMMITTED)


@pytest.mark.parametrize("state", [ReservationState.RESERVED, ReservationState.COMMITTED])
def test_commit_from_reserved_or_committed(state: ReservationState) -> None:
    assert domain.commit_transition(state, "o") is ReservationState.COMMITTED


@pytest.mark.parametrize("state", [None, ReservationState.RELEASED])
def test_commit_requires_a_reservation(state: ReservationState | None) -> None:
    with pytest.raises(FailedPrecondition):
        domain.commit_transition(state, "o")


@pytest.mark.parametrize(
    ("product_id", "delta", "field"),
    [
        ("", 1, "product_id"),
        ("a", 0, "delta"),
        ("a", 10**9 + 1, "delta"),
        ("a", -(10**9) - 1, "delta"),
    ],
)
def test_invalid_adjust_names_the_field(product_id: str, delta: int, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        domain.validate_adjust(product_id, delta)
    assert exc.value.field == field


def test_adjust_never_goes_below_zero() -> None:
    level = StockLevel("a", 5, 2, 1)
    assert domain.adjusted_available(level, AdjustCommand("a", -5)) == 0
    assert domain.adjusted_available(level, AdjustCommand("a", 3)) == 8
    assert domain.adjusted_available(None, AdjustCommand("a", 4)) == 4
    with pytest.raises(FailedPrecondition):
        domain.adjusted_available(level, AdjustCommand("a", -6))
    with pytest.raises(FailedPrecondition):
        domain.adjusted_available(None, AdjustCommand("a", -1))
