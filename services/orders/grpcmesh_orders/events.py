"""Order events and the projection that folds them into the order's read model. Pure: no I/O.

An order *is* its event log: ``PLACED`` first, then one event per saga step or state change,
numbered 1, 2, 3, ... without gaps, ending with ``CONFIRMED`` or ``CANCELLED``. Each event type
has a frozen payload dataclass; payloads round-trip through JSON (the ``payload`` column).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar, Self

JsonObject = dict[str, Any]


class EventType(enum.Enum):
    """Mirrors ``OrderEventType`` in orders.proto; the value is what the log stores."""

    PLACED = "PLACED"
    PRICED = "PRICED"
    STOCK_RESERVED = "STOCK_RESERVED"
    PAYMENT_CAPTURED = "PAYMENT_CAPTURED"
    STOCK_COMMITTED = "STOCK_COMMITTED"
    CONFIRMED = "CONFIRMED"
    STEP_FAILED = "STEP_FAILED"
    PAYMENT_REFUNDED = "PAYMENT_REFUNDED"
    STOCK_RELEASED = "STOCK_RELEASED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (EventType.CONFIRMED, EventType.CANCELLED)


class OrderState(enum.Enum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self is not OrderState.PENDING


class Step(enum.Enum):
    """The forward saga steps that call another service and so can fail."""

    PRICE = "price"
    RESERVE = "reserve"
    CHARGE = "charge"
    COMMIT = "commit"


@dataclass(frozen=True)
class Money:
    currency_code: str
    amount_minor: int

    def to_json(self) -> JsonObject:
        return {"currency_code": self.currency_code, "amount_minor": self.amount_minor}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Money:
        return cls(str(data["currency_code"]), int(data["amount_minor"]))

    def __str__(self) -> str:
        return f"{self.amount_minor} {self.currency_code} (minor units)"


@dataclass(frozen=True)
class LineItem:
    product_id: str
    quantity: int

    def to_json(self) -> JsonObject:
        return {"product_id": self.product_id, "quantity": self.quantity}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LineItem:
        return cls(str(data["product_id"]), int(data["quantity"]))


@dataclass(frozen=True)
class PricedLine:
    product_id: str
    quantity: int
    unit_price: Money

    @property
    def subtotal_minor(self) -> int:
        return self.unit_price.amount_minor * self.quantity

    def to_json(self) -> JsonObject:
        return {
            "product_id": self.product_id,
            "quantity": self.quantity,
            "unit_price": self.unit_price.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PricedLine:
        return cls(
            str(data["product_id"]), int(data["quantity"]), Money.from_json(data["unit_price"])
        )


# --- payloads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    TYPE: ClassVar[EventType] = EventType.PLACED
    customer_id: str
    currency_code: str
    items: tuple[LineItem, ...]

    @property
    def detail(self) -> str:
        return f"placed by {self.customer_id}: {len(self.items)} item(s) in {self.currency_code}"

    def to_json(self) -> JsonObject:
        return {
            "customer_id": self.customer_id,
            "currency_code": self.currency_code,
            "items": [i.to_json() for i in self.items],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            str(data["customer_id"]),
            str(data["currency_code"]),
            tuple(LineItem.from_json(i) for i in data["items"]),
        )


@dataclass(frozen=True)
class Priced:
    TYPE: ClassVar[EventType] = EventType.PRICED
    lines: tuple[PricedLine, ...]
    total: Money

    @property
    def detail(self) -> str:
        return f"priced: total {self.total}"

    def to_json(self) -> JsonObject:
        return {"lines": [line.to_json() for line in self.lines], "total": self.total.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            tuple(PricedLine.from_json(line) for line in data["lines"]),
            Money.from_json(data["total"]),
        )


@dataclass(frozen=True)
class StockReserved:
    TYPE: ClassVar[EventType] = EventType.STOCK_RESERVED

    @property
    def detail(self) -> str:
        return "stock reserved"

    def to_json(self) -> JsonObject:
        return {}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls()


@dataclass(frozen=True)
class PaymentCaptured:
    TYPE: ClassVar[EventType] = EventType.PAYMENT_CAPTURED
    payment_id: str
    amount: Money
    # True when the capture was only discovered while compensating an in-doubt charge.
    recovered: bool = False

    @property
    def detail(self) -> str:
        how = "in-doubt charge turned out captured" if self.recovered else "payment captured"
        return f"{how}: {self.payment_id} for {self.amount}"

    def to_json(self) -> JsonObject:
        return {
            "payment_id": self.payment_id,
            "amount": self.amount.to_json(),
            "recovered": self.recovered,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            str(data["payment_id"]), Money.from_json(data["amount"]), bool(data["recovered"])
        )


@dataclass(frozen=True)
class StockCommitted:
    TYPE: ClassVar[EventType] = EventType.STOCK_COMMITTED
    # True when a commit reported as failed had in fact landed (found while compensating).
    recovered: bool = False

    @property
    def detail(self) -> str:
        if self.recovered:
            return "stock commit had landed despite the failure; rolling forward"
        return "stock committed"

    def to_json(self) -> JsonObject:
        return {"recovered": self.recovered}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(bool(data["recovered"]))


@dataclass(frozen=True)
class Confirmed:
    TYPE: ClassVar[EventType] = EventType.CONFIRMED

    @property
    def detail(self) -> str:
        return "order confirmed"

    def to_json(self) -> JsonObject:
        return {}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls()


@dataclass(frozen=True)
class StepFailed:
    TYPE: ClassVar[EventType] = EventType.STEP_FAILED
    step: Step
    # gRPC status name ("UNAVAILABLE"), or "" for a failure decided here (e.g. currency mismatch).
    code: str
    message: str
    # True when the step's remote effect may have happened although the call failed.
    in_doubt: bool
    # False when the request certainly never left this process's side of the mesh (its own
    # sidecar answered, see clients.never_sent): the step did not happen, nothing to undo.
    sent: bool = True

    @property
    def detail(self) -> str:
        code = f" ({self.code})" if self.code else ""
        doubt = " [outcome unknown]" if self.in_doubt else ""
        unsent = " [never sent]" if not self.sent else ""
        return f"{self.step.value} failed{code}: {self.message}{doubt}{unsent}"

    def to_json(self) -> JsonObject:
        return {
            "step": self.step.value,
            "code": self.code,
            "message": self.message,
            "in_doubt": self.in_doubt,
            "sent": self.sent,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(
            Step(data["step"]),
            str(data["code"]),
            str(data["message"]),
            bool(data["in_doubt"]),
            bool(data.get("sent", True)),  # logs written before the field existed
        )


@dataclass(frozen=True)
class PaymentRefunded:
    TYPE: ClassVar[EventType] = EventType.PAYMENT_REFUNDED
    payment_id: str

    @property
    def detail(self) -> str:
        return f"payment refunded: {self.payment_id}"

    def to_json(self) -> JsonObject:
        return {"payment_id": self.payment_id}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(str(data["payment_id"]))


@dataclass(frozen=True)
class StockReleased:
    TYPE: ClassVar[EventType] = EventType.STOCK_RELEASED

    @property
    def detail(self) -> str:
        return "stock released"

    def to_json(self) -> JsonObject:
        return {}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls()


@dataclass(frozen=True)
class Cancelled:
    TYPE: ClassVar[EventType] = EventType.CANCELLED
    reason: str

    @property
    def detail(self) -> str:
        return f"order cancelled: {self.reason}"

    def to_json(self) -> JsonObject:
        return {"reason": self.reason}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return cls(str(data["reason"]))


EventData = (
    Placed
    | Priced
    | StockReserved
    | PaymentCaptured
    | StockCommitted
    | Confirmed
    | StepFailed
    | PaymentRefunded
    | StockReleased
    | Cancelled
)

_PAYLOAD_TYPES: dict[EventType, type[EventData]] = {
    cls.TYPE: cls
    for cls in (
        Placed,
        Priced,
        StockReserved,
        PaymentCaptured,
        StockCommitted,
        Confirmed,
        StepFailed,
        PaymentRefunded,
        StockReleased,
        Cancelled,
    )
}


def decode_payload(event_type: EventType, data: Mapping[str, Any]) -> EventData:
    return _PAYLOAD_TYPES[event_type].from_json(data)


@dataclass(frozen=True)
class Event:
    """One entry of an order's log."""

    order_id: str
    sequence: int
    time: datetime
    data: EventData
    # As written to the log; derived from the payload when the event is created.
    detail: str = ""

    def __post_init__(self) -> None:
        if not self.detail:
            object.__setattr__(self, "detail", self.data.detail)

    @property
    def type(self) -> EventType:
        return self.data.TYPE


# --- projection --------------------------------------------------------------------------------


class CorruptLog(ValueError):
    """The stored log breaks an invariant (gap, no PLACED first, events after the end)."""


@dataclass(frozen=True)
class OrderView:
    """The read model of one order (the projection table's row)."""

    order_id: str
    customer_id: str
    currency_code: str
    items: tuple[LineItem, ...]
    # Empty until the order is priced.
    lines: tuple[PricedLine, ...]
    total: Money | None
    state: OrderState
    failure_reason: str
    payment_id: str
    created_at: datetime
    updated_at: datetime
    last_sequence: int


def start_view(event: Event) -> OrderView:
    if not isinstance(event.data, Placed) or event.sequence != 1:
        raise CorruptLog(f"order {event.order_id}: the log must start with PLACED at 1")
    placed = event.data
    return OrderView(
        order_id=event.order_id,
        customer_id=placed.customer_id,
        currency_code=placed.currency_code,
        items=placed.items,
        lines=(),
        total=None,
        state=OrderState.PENDING,
        failure_reason="",
        payment_id="",
        created_at=event.time,
        updated_at=event.time,
        last_sequence=1,
    )


def apply_event(view: OrderView, event: Event) -> OrderView:
    """The view after ``event``; the next event of the same order's log."""
    if event.order_id != view.order_id or event.sequence != view.last_sequence + 1:
        raise CorruptLog(
            f"order {view.order_id}: expected event {view.last_sequence + 1}, "
            f"got {event.order_id}#{event.sequence}"
        )
    if view.state.terminal:
        raise CorruptLog(f"order {view.order_id}: event after the terminal event")
    view = replace(view, updated_at=event.time, last_sequence=event.sequence)
    match event.data:
        case Placed():
            raise CorruptLog(f"order {view.order_id}: PLACED twice")
        case Priced(lines=lines, total=total):
            return replace(view, lines=lines, total=total)
        case PaymentCaptured(payment_id=payment_id):
            return replace(view, payment_id=payment_id)
        case Confirmed():
            return replace(view, state=OrderState.CONFIRMED)
        case Cancelled(reason=reason):
            return replace(view, state=OrderState.CANCELLED, failure_reason=reason)
        case _:
            # Other events move the saga along but do not change what readers see.
            return view


def project(events: Iterable[Event]) -> OrderView:
    """Folds a whole log (PLACED first) into the order's view."""
    iterator = iter(events)
    first = next(iterator, None)
    if first is None:
        raise CorruptLog("an order log cannot be empty")
    view = start_view(first)
    for event in iterator:
        view = apply_event(view, event)
    return view


def last_sequence(events: Sequence[Event]) -> int:
    return events[-1].sequence if events else 0
