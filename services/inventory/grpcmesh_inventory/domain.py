"""Inventory rules: request validation and the reservation state machine. Pure: no I/O.

A reservation is keyed by order id and moves RESERVED -> COMMITTED or RESERVED -> RELEASED;
releasing an order that never reserved records RELEASED directly (a tombstone), so a reserve
that arrives late (e.g. a retried request overtaken by the saga's compensation) is refused.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from grpcmesh_kit import Aborted, FailedPrecondition, InvalidArgument
from grpcmesh_shop import LineItemLike, require_id, validate_line_items

# Bounds one AdjustStock call; keeps stock far from SQLite's 64-bit integer limit.
MAX_ADJUST_DELTA = 1_000_000_000


class ReservationState(enum.Enum):
    RESERVED = "RESERVED"
    RELEASED = "RELEASED"
    COMMITTED = "COMMITTED"


@dataclass(frozen=True)
class LineItem:
    product_id: str
    quantity: int


@dataclass(frozen=True)
class ReserveCommand:
    order_id: str
    # Sorted by product id, so equal requests compare equal whatever their item order.
    items: tuple[LineItem, ...]


@dataclass(frozen=True)
class AdjustCommand:
    product_id: str
    delta: int


@dataclass(frozen=True)
class StockLevel:
    product_id: str
    available: int
    reserved: int
    committed: int


@dataclass(frozen=True)
class Reservation:
    order_id: str
    state: ReservationState
    items: tuple[LineItem, ...]


def validate_order_id(order_id: str) -> str:
    return require_id(order_id, "order_id")


def validate_product_id(product_id: str, field: str = "product_id") -> str:
    return require_id(product_id, field)


def validate_reserve(order_id: str, items: Sequence[LineItemLike]) -> ReserveCommand:
    validate_order_id(order_id)
    checked = (LineItem(*item) for item in validate_line_items(items))
    return ReserveCommand(order_id, tuple(sorted(checked, key=lambda i: i.product_id)))


def validate_adjust(product_id: str, delta: int) -> AdjustCommand:
    validate_product_id(product_id)
    if delta == 0:
        raise InvalidArgument("delta", "must not be zero")
    if abs(delta) > MAX_ADJUST_DELTA:
        raise InvalidArgument(
            "delta", f"must be between -{MAX_ADJUST_DELTA} and {MAX_ADJUST_DELTA}"
        )
    return AdjustCommand(product_id, delta)


def repeat_reserve(existing: Reservation, command: ReserveCommand) -> ReservationState:
    """Outcome of a ReserveStock for an order that already has a reservation record.

    Same items while RESERVED: an idempotent retry, nothing more happens. Different items: the
    caller reused an order id for a different request; INVALID_ARGUMENT (not ABORTED) because
    no retry can ever succeed, and retry policies treat ABORTED as retryable.
    """
    if existing.state is not ReservationState.RESERVED:
        raise Aborted(f"order {command.order_id!r} is already {existing.state.value.lower()}")
    if existing.items != command.items:
        raise InvalidArgument("items", f"differ from the items order {command.order_id!r} reserved")
    return ReservationState.RESERVED


def check_availability(item: LineItem, available: int) -> None:
    if available < item.quantity:
        raise FailedPrecondition(
            f"insufficient stock for {item.product_id!r}: "
            f"requested {item.quantity}, available {available}"
        )


def release_transition(state: ReservationState | None) -> ReservationState:
    """RESERVED and unknown orders become RELEASED; RELEASED stays; COMMITTED is final."""
    if state is ReservationState.COMMITTED:
        raise FailedPrecondition("the order's stock is committed and can no longer be released")
    return ReservationState.RELEASED


def commit_transition(state: ReservationState | None, order_id: str) -> ReservationState:
    if state is ReservationState.RESERVED or state is ReservationState.COMMITTED:
        return ReservationState.COMMITTED
    if state is None:
        raise FailedPrecondition(f"order {order_id!r} has no reservation")
    raise FailedPrecondition(f"order {order_id!r} is released and cannot be committed")


def adjusted_available(level: StockLevel | None, command: AdjustCommand) -> int:
    current = 0 if level is None else level.available
    result = current + command.delta
    if result < 0:
        raise FailedPrecondition(
            f"cannot remove {-command.delta} of {command.product_id!r}: only {current} available"
        )
    return result
