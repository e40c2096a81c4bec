"""Pure tests of the order saga: event payloads, the projection fold, the decision function,
pricing and request validation. No gRPC, no SQLite.

The saga is also driven against a small in-memory model of inventory and payments, with a
fault at every step (definite failure, unknown outcome that did not land, unknown outcome that
did land) and a crash at every point, to check that every run ends terminal and consistent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from grpcmesh_kit.errors import InvalidArgument
from grpcmesh_kit.pagetokens import PageTokens
from grpcmesh_orders import saga
from grpcmesh_orders.events import (
    Cancelled,
    Confirmed,
    CorruptLog,
    Event,
    EventData,
    EventType,
    LineItem,
    Money,
    OrderState,
    PaymentCaptured,
    PaymentRefunded,
    Placed,
    Priced,
    PricedLine,
    Step,
    StepFailed,
    StockCommitted,
    StockReleased,
    StockReserved,
    decode_payload,
    project,
)
from grpcmesh_orders.saga import (
    Cancel,
    ChargePayment,
    CommitStock,
    Confirm,
    Finished,
    PriceItems,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
    ResolveCharge,
    ResolveCommit,
    next_action,
    progress,
)
from grpcmesh_orders.validation import (
    decode_page_token,
    encode_page_token,
    validate_list_orders,
    validate_place_order,
)
from grpcmesh_shop import LineItemLike

ORDER = "o-1"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
ITEMS = (LineItem("sku-1", 2), LineItem("sku-2", 1))
PLACED = Placed("cust-1", "USD", ITEMS)
PRICES = {"sku-1": Money("USD", 250), "sku-2": Money("USD", 1000)}
PRICED = Priced(
    (PricedLine("sku-1", 2, Money("USD", 250)), PricedLine("sku-2", 1, Money("USD", 1000))),
    Money("USD", 1500),
)
CAPTURED = PaymentCaptured("pay-1", Money("USD", 1500))


def log_of(*data: EventData) -> list[Event]:
    return [Event(ORDER, n, T0 + timedelta(seconds=n), d) for n, d in enumerate(data, start=1)]


def action_for(*data: EventData) -> saga.Action:
    return next_action(progress(log_of(*data)))


# --- payloads and projection --------------------------------------------------------------------

ALL_PAYLOADS: list[EventData] = [
    PLACED,
    PRICED,
    StockReserved(),
    CAPTURED,
    PaymentCaptured("pay-2", Money("EUR", 1), recovered=True),
    StockCommitted(),
    StockCommitted(recovered=True),
    Confirmed(),
    StepFailed(Step.CHARGE, "UNAVAILABLE", "down", in_doubt=True),
    StepFailed(Step.CHARGE, "UNAVAILABLE", "no healthy upstream", in_doubt=False, sent=False),
    PaymentRefunded("pay-1"),
    StockReleased(),
    Cancelled("out of stock"),
]


@pytest.mark.parametrize("data", ALL_PAYLOADS, ids=lambda d: type(d).__name__)
def test_every_payload_round_trips_through_json(data: EventData) -> None:
    assert decode_payload(data.TYPE, data.to_json()) == data
    assert data.detail


def test_event_types_mirror_the_proto_enum() -> None:
    from grpcmesh.shop.v1 import orders_pb2

    proto_names = {
        value.name.removeprefix("ORDER_EVENT_TYPE_")
        for value in orders_pb2.OrderEventType.DESCRIPTOR.values
        if value.number != 0
    }
    assert proto_names == {t.value for t in EventType}


def test_projection_of_a_confirmed_order() -> None:
    events = log_of(PLACED, PRICED, StockReserved(), CAPTURED, StockCommitted(), Confirmed())
    view = project(events)
    assert view.state is OrderState.CONFIRMED
    assert view.customer_id == "cust-1"
    assert view.lines == PRICED.lines
    assert view.total == Money("USD", 1500)
    assert view.payment_id == "pay-1"
    assert view.failure_reason == ""
    assert view.created_at == T0 + timedelta(seconds=1)
    assert view.updated_at == T0 + timedelta(seconds=6)
    assert view.last_sequence == 6


def test_projection_of_a_pending_then_cancelled_order() -> None:
    events = log_of(PLACED, StepFailed(Step.PRICE, "NOT_FOUND", "no sku", False))
    view = project(events)
    assert view.state is OrderState.PENDING
    assert view.lines == () and view.total is None
    cancelled = project([*events, Event(ORDER, 3, T0, Cancelled("pricing failed"))])
    assert cancelled.state is OrderState.CANCELLED
    assert cancelled.failure_reason == "pricing failed"


@pytest.mark.parametrize(
    "events",
    [
        [],
        log_of(PRICED),
        [*log_of(PLACED), Event(ORDER, 3, T0, StockReserved())],
        [*log_of(PLACED), Event("other", 2, T0, StockReserved())],
        log_of(PLACED, PLACED),
        log_of(PLACED, Cancelled("x"), StockReleased()),
    ],
    ids=["empty", "no-placed", "gap", "foreign", "placed-twice", "after-terminal"],
)
def test_projection_rejects_a_corrupt_log(events: list[Event]) -> None:
    with pytest.raises(CorruptLog):
        project(events)


# --- decisions -----------------------------------------------------------------------------------


def test_forward_path_decides_each_step_in_order() -> None:
    assert action_for(PLACED) == PriceItems(ITEMS, "USD")
    assert action_for(PLACED, PRICED) == ReserveStock(ITEMS)
    assert action_for(PLACED, PRICED, StockReserved()) == ChargePayment(
        f"order-{ORDER}-charge", "cust-1", Money("USD", 1500)
    )
    assert action_for(PLACED, PRICED, StockReserved(), CAPTURED) == CommitStock()
    assert action_for(PLACED, PRICED, StockReserved(), CAPTURED, StockCommitted()) == Confirm()
    done = (PLACED, PRICED, StockReserved(), CAPTURED, StockCommitted(), Confirmed())
    assert action_for(*done) == Finished()


def test_pricing_failure_cancels_without_touching_stock_or_money() -> None:
    failed = StepFailed(Step.PRICE, "NOT_FOUND", "unknown product", False)
    assert action_for(PLACED, failed) == Cancel("pricing failed: unknown product")


def test_definite_reserve_failure_still_releases_to_leave_a_tombstone() -> None:
    failed = StepFailed(Step.RESERVE, "FAILED_PRECONDITION", "short", False)
    assert action_for(PLACED, PRICED, failed) == ReleaseStock()
    assert action_for(PLACED, PRICED, failed, StockReleased()) == Cancel("out of stock: short")


def test_a_reserve_that_never_left_releases_nothing() -> None:
    unsent = saga.step_failed(Step.RESERVE, "UNAVAILABLE", "no healthy upstream", sent=False)
    assert not unsent.in_doubt
    assert isinstance(action_for(PLACED, PRICED, unsent), Cancel)


def test_decline_releases_stock_and_refunds_nothing() -> None:
    declined = StepFailed(Step.CHARGE, "FAILED_PRECONDITION", "card declined", False)
    base = (PLACED, PRICED, StockReserved(), declined)
    assert action_for(*base) == ReleaseStock()
    assert action_for(*base, StockReleased()) == Cancel("payment declined: card declined")


def test_a_charge_that_never_left_is_neither_resent_nor_refunded() -> None:
    unsent = saga.step_failed(Step.CHARGE, "UNAVAILABLE", "no healthy upstream", sent=False)
    assert not unsent.in_doubt and "[never sent]" in unsent.detail
    base = (PLACED, PRICED, StockReserved(), unsent)
    assert action_for(*base) == ReleaseStock()
    assert isinstance(action_for(*base, StockReleased()), Cancel)


def test_in_doubt_charge_is_resolved_by_resending_it_before_stock_is_released() -> None:
    lost = StepFailed(Step.CHARGE, "DEADLINE_EXCEEDED", "timeout", True)
    base = (PLACED, PRICED, StockReserved(), lost)
    action = action_for(*base)
    assert isinstance(action, ResolveCharge)
    assert action.idempotency_key == f"order-{ORDER}-charge"
    assert action.amount == Money("USD", 1500)
    found = PaymentCaptured("pay-9", Money("USD", 1500), recovered=True)
    assert action_for(*base, found) == RefundPayment(f"order-{ORDER}-refund", "pay-9")
    assert action_for(*base, found, PaymentRefunded("pay-9")) == ReleaseStock()
    # Declined on the re-send: settled, nothing to refund; the first failure stays the reason.
    declined = StepFailed(Step.CHARGE, "FAILED_PRECONDITION", "card declined", False)
    assert action_for(*base, declined) == ReleaseStock()
    cancel = action_for(*base, declined, StockReleased())
    assert isinstance(cancel, Cancel) and "timeout" in cancel.reason


def test_a_definite_commit_failure_refunds_first_then_releases() -> None:
    failed = StepFailed(Step.COMMIT, "FAILED_PRECONDITION", "gone", False)
    base = (PLACED, PRICED, StockReserved(), CAPTURED, failed)
    assert action_for(*base) == RefundPayment(f"order-{ORDER}-refund", "pay-1")
    assert action_for(*base, PaymentRefunded("pay-1")) == ReleaseStock()
    refunded = (*base, PaymentRefunded("pay-1"), StockReleased())
    assert isinstance(action_for(*refunded), Cancel)


def test_an_in_doubt_commit_is_settled_before_any_money_moves() -> None:
    failed = StepFailed(Step.COMMIT, "UNAVAILABLE", "down", True)
    base = (PLACED, PRICED, StockReserved(), CAPTURED, failed)
    assert action_for(*base) == ResolveCommit()
    refused = StepFailed(Step.COMMIT, "FAILED_PRECONDITION", "no reservation", False)
    assert action_for(*base, refused) == RefundPayment(f"order-{ORDER}-refund", "pay-1")


def test_a_commit_found_to_have_landed_rolls_forward_to_confirmed() -> None:
    failed = StepFailed(Step.COMMIT, "DEADLINE_EXCEEDED", "timeout", True)
    base = (PLACED, PRICED, StockReserved(), CAPTURED, failed, StockCommitted(recovered=True))
    assert action_for(*base) == Confirm()
    assert project(log_of(*base, Confirmed())).state is OrderState.CONFIRMED


def test_a_step_failed_written_before_sent_existed_still_reads() -> None:
    old = {"step": "charge", "code": "UNAVAILABLE", "message": "down", "in_doubt": True}
    data = decode_payload(EventType.STEP_FAILED, old)
    assert data == StepFailed(Step.CHARGE, "UNAVAILABLE", "down", in_doubt=True, sent=True)


@pytest.mark.parametrize(
    ("code", "in_doubt"),
    [
        ("FAILED_PRECONDITION", False),
        ("INVALID_ARGUMENT", False),
        ("NOT_FOUND", False),
        ("UNAVAILABLE", True),
        ("DEADLINE_EXCEEDED", True),
        ("INTERNAL", True),
        ("UNKNOWN", True),
        ("CANCELLED", True),
        ("ABORTED", True),
    ],
)
def test_which_failures_leave_the_outcome_in_doubt(code: str, in_doubt: bool) -> None:
    assert saga.outcome_in_doubt(code) is in_doubt
    assert saga.step_failed(Step.CHARGE, code, "x").in_doubt is in_doubt


# --- pricing -------------------------------------------------------------------------------------


def test_pricing_totals_the_lines() -> None:
    assert saga.price_order(ITEMS, "USD", PRICES) == PRICED


@pytest.mark.parametrize(
    ("prices", "fragment"),
    [
        ({"sku-1": Money("USD", 250)}, "unknown product 'sku-2'"),
        ({**PRICES, "sku-2": Money("EUR", 1000)}, "priced in EUR"),
        ({"sku-1": Money("USD", 0), "sku-2": Money("USD", 0)}, "total is zero"),
        ({**PRICES, "sku-1": Money("USD", 2**62)}, "exceeds"),
        ({**PRICES, "sku-2": Money("USD", -1)}, "negative"),
    ],
    ids=["unknown", "currency", "zero", "overflow", "negative"],
)
def test_pricing_failures(prices: dict[str, Money], fragment: str) -> None:
    result = saga.price_order(ITEMS, "USD", prices)
    assert isinstance(result, StepFailed)
    assert result.step is Step.PRICE and not result.in_doubt
    assert fragment in result.message


# --- the saga against a model of the other services ----------------------------------------------


class Fault(enum.Enum):
    DEFINITE = "definite"  # refused, nothing happened (e.g. out of stock, declined)
    LOST = "lost"  # the effect happened but the caller saw UNAVAILABLE
    NOT_LANDED = "not-landed"  # UNAVAILABLE and nothing happened
    NOT_SENT = "not-sent"  # the caller's own sidecar refused it: nothing happened, and it knows


class Crash(Exception):
    """The process died after an action's effect and before its events were appended."""


class Stalled(Exception):
    pass


@dataclass
class Model:
    """Inventory reservations and payments as the saga sees them, with one-shot faults."""

    faults: dict[Step, Fault] = field(default_factory=dict)
    reservation: str | None = None  # RESERVED | RELEASED | COMMITTED
    payments: dict[str, str] = field(default_factory=dict)  # charge key -> state
    charge_calls: int = 0

    def _fault(self, step: Step) -> Fault | None:
        return self.faults.pop(step, None)

    def check_money_and_stock(self) -> None:
        """The invariant at every point of every run: money captured and not refunded only
        while the order's stock is held (reserved or sold), never once it was released."""
        if "CAPTURED" in self.payments.values():
            assert self.reservation in ("RESERVED", "COMMITTED"), "captured with stock released"

    def _failed(self, step: Step, fault: Fault) -> list[EventData]:
        code = "FAILED_PRECONDITION" if fault is Fault.DEFINITE else "UNAVAILABLE"
        sent = fault is not Fault.NOT_SENT
        return [saga.step_failed(step, code, f"injected {fault.value}", sent=sent)]

    def execute(self, action: saga.Action) -> list[EventData]:
        match action:
            case PriceItems(items=items, currency_code=currency):
                if fault := self._fault(Step.PRICE):
                    return self._failed(Step.PRICE, fault)
                return [saga.price_order(items, currency, PRICES)]
            case ReserveStock():
                fault = self._fault(Step.RESERVE)
                if fault in (None, Fault.LOST) and self.reservation is None:
                    self.reservation = "RESERVED"
                if fault is not None:
                    return self._failed(Step.RESERVE, fault)
                if self.reservation != "RESERVED":
                    return [saga.step_failed(Step.RESERVE, "ABORTED", "already released")]
                return [StockReserved()]
            case ChargePayment(idempotency_key=key, amount=amount):
                self.charge_calls += 1
                fault = self._fault(Step.CHARGE)
                if fault is Fault.NOT_SENT:
                    self.charge_calls -= 1  # it never reached payments
                elif fault is Fault.DEFINITE:
                    self.payments.setdefault(key, "DECLINED")
                elif fault in (None, Fault.LOST):
                    self.payments.setdefault(key, "CAPTURED")
                if fault is not None:
                    return self._failed(Step.CHARGE, fault)
                if self.payments[key] == "DECLINED":  # a repeat returns the first outcome
                    return self._failed(Step.CHARGE, Fault.DEFINITE)
                return [PaymentCaptured(key, amount)]
            case CommitStock():
                fault = self._fault(Step.COMMIT)
                if fault in (None, Fault.LOST) and self.reservation == "RESERVED":
                    self.reservation = "COMMITTED"
                if fault is not None:
                    return self._failed(Step.COMMIT, fault)
                return [StockCommitted()]
            case ResolveCommit():
                if self.reservation == "RESERVED":
                    self.reservation = "COMMITTED"
                if self.reservation == "COMMITTED":
                    return [StockCommitted(recovered=True)]
                return [saga.step_failed(Step.COMMIT, "FAILED_PRECONDITION", "not reserved")]
            case ReleaseStock():
                if self.reservation == "COMMITTED":
                    raise Stalled("release refused")
                self.reservation = "RELEASED"
                return [StockReleased()]
            case RefundPayment(payment_id=payment_id):
                assert self.payments[payment_id] in ("CAPTURED", "REFUNDED")
                self.payments[payment_id] = "REFUNDED"
                return [PaymentRefunded(payment_id)]
            case ResolveCharge(idempotency_key=key, amount=amount):
                self.charge_calls += 1
                outcome = self.payments.setdefault(key, "CAPTURED")
                if outcome == "DECLINED":
                    return [saga.step_failed(Step.CHARGE, "FAILED_PRECONDITION", "declined")]
                return [PaymentCaptured(key, amount, recovered=True)]
            case Cancel(reason=reason):
                return [Cancelled(reason)]
            case Confirm():
                return [Confirmed()]
            case Finished():
                raise AssertionError("nothing to execute")


def drive(model: Model, crash_at: int | None = None) -> list[Event]:
    """Runs the saga to the end; with ``crash_at``, the effects of action number ``crash_at``
    happen but its events are lost, and the saga resumes from the log (as after a restart)."""
    events = log_of(PLACED)
    for count in range(50):
        action = next_action(progress(events))
        if isinstance(action, Finished):
            return events
        produced = model.execute(action)
        model.check_money_and_stock()
        if count == crash_at:
            continue
        for data in produced:
            events.append(Event(ORDER, len(events) + 1, T0, data))
    raise AssertionError("saga did not finish")


def assert_consistent(model: Model, events: list[Event]) -> OrderState:
    view = project(events)  # also checks the log's shape
    assert view.state.terminal
    captured = [k for k, state in model.payments.items() if state == "CAPTURED"]
    if view.state is OrderState.CONFIRMED:
        assert model.reservation == "COMMITTED"
        assert captured == [saga.charge_key(ORDER)]
    else:
        assert model.reservation in (None, "RELEASED")
        assert captured == []
    return view.state


SCENARIOS: list[tuple[Step, Fault, OrderState]] = [
    (Step.PRICE, Fault.DEFINITE, OrderState.CANCELLED),
    (Step.PRICE, Fault.NOT_LANDED, OrderState.CANCELLED),
    (Step.RESERVE, Fault.DEFINITE, OrderState.CANCELLED),
    (Step.RESERVE, Fault.NOT_LANDED, OrderState.CANCELLED),
    (Step.RESERVE, Fault.LOST, OrderState.CANCELLED),
    (Step.CHARGE, Fault.DEFINITE, OrderState.CANCELLED),
    (Step.CHARGE, Fault.NOT_LANDED, OrderState.CANCELLED),
    (Step.CHARGE, Fault.LOST, OrderState.CANCELLED),
    (Step.CHARGE, Fault.NOT_SENT, OrderState.CANCELLED),
    (Step.RESERVE, Fault.NOT_SENT, OrderState.CANCELLED),
    (Step.COMMIT, Fault.NOT_SENT, OrderState.CANCELLED),
    (Step.COMMIT, Fault.DEFINITE, OrderState.CANCELLED),
    # Re-sending the in-doubt commit lands it: the sale stands rather than being refunded.
    (Step.COMMIT, Fault.NOT_LANDED, OrderState.CONFIRMED),
    # The commit landed: the sale stands and the order is confirmed, not refunded.
    (Step.COMMIT, Fault.LOST, OrderState.CONFIRMED),
]


@pytest.mark.parametrize(
    ("step", "fault", "expected"), SCENARIOS, ids=[f"{s.value}-{f.value}" for s, f, _ in SCENARIOS]
)
def test_every_fault_ends_terminal_and_consistent(
    step: Step, fault: Fault, expected: OrderState
) -> None:
    model = Model(faults={step: fault})
    events = drive(model)
    assert assert_consistent(model, events) is expected
    # One failure; a second only ever settles the first one's doubt, and never adds money.
    assert 1 <= sum(e.type is EventType.STEP_FAILED for e in events) <= 2
    if fault is Fault.NOT_SENT and step is Step.CHARGE:
        assert model.payments == {} and model.charge_calls == 0  # never re-sent, no refund


def test_the_happy_path_charges_once() -> None:
    model = Model()
    events = drive(model)
    assert assert_consistent(model, events) is OrderState.CONFIRMED
    assert model.charge_calls == 1
    assert [e.type for e in events] == [
        EventType.PLACED,
        EventType.PRICED,
        EventType.STOCK_RESERVED,
        EventType.PAYMENT_CAPTURED,
        EventType.STOCK_COMMITTED,
        EventType.CONFIRMED,
    ]


@pytest.mark.parametrize("crash_at", range(8))
@pytest.mark.parametrize(
    ("step", "fault"),
    [(None, None), *[(s, f) for s, f, _ in SCENARIOS]],
    ids=["ok", *[f"{s.value}-{f.value}" for s, f, _ in SCENARIOS]],
)
def test_a_crash_anywhere_resumes_to_a_consistent_end(
    step: Step | None, fault: Fault | None, crash_at: int
) -> None:
    model = Model(faults={step: fault} if step and fault else {})
    events = drive(model, crash_at=crash_at)
    assert_consistent(model, events)
    # Re-sending a charge is fine; it never creates a second payment.
    assert len(model.payments) <= 1


# --- validation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    product_id: str
    quantity: int


def place(**overrides: object) -> Callable[[], object]:
    request: dict[str, object] = {
        "idempotency_key": "k-1",
        "customer_id": "cust-1",
        "items": [Item("sku-1", 1)],
        "currency_code": "USD",
    }
    request.update(overrides)

    def call() -> object:
        items: list[LineItemLike] = request["items"]  # type: ignore[assignment]
        return validate_place_order(
            str(request["idempotency_key"]),
            str(request["customer_id"]),
            items,
            str(request["currency_code"]),
        )

    return call


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 129}, "idempotency_key"),
        ({"customer_id": ""}, "customer_id"),
        ({"items": []}, "items"),
        ({"items": [Item(f"sku-{n}", 1) for n in range(101)]}, "items"),
        ({"items": [Item("sku-1", 0)]}, "items[0].quantity"),
        ({"items": [Item("sku-1", 1), Item("sku-2", 1001)]}, "items[1].quantity"),
        ({"items": [Item("", 1)]}, "items[0].product_id"),
        ({"items": [Item("sku-1", 1), Item("sku-1", 2)]}, "items[1].product_id"),
        ({"currency_code": "usd"}, "currency_code"),
        ({"currency_code": "US"}, "currency_code"),
        ({"currency_code": "USDX"}, "currency_code"),
    ],
)
def test_invalid_place_order_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        place(**overrides)()
    assert exc.value.field == field


def test_valid_limits_are_accepted_and_the_fingerprint_ignores_item_order() -> None:
    a = validate_place_order("k" * 128, "c", [Item("a", 1), Item("b", 1000)], "EUR")
    b = validate_place_order("k" * 128, "c", [Item("b", 1000), Item("a", 1)], "EUR")
    assert a.fingerprint == b.fingerprint
    c = validate_place_order("k" * 128, "other", [Item("a", 1), Item("b", 1000)], "EUR")
    assert c.fingerprint != a.fingerprint


def test_page_tokens_round_trip_and_are_bound_to_the_filter() -> None:
    tokens = PageTokens(b"k" * 32)
    token = encode_page_token(tokens, 42, "cust-1")
    assert decode_page_token(tokens, token, "cust-1") == 42
    assert validate_list_orders("cust-1", 0, token, tokens).before == 42
    assert validate_list_orders("", 0, "", tokens).limit == 50
    for args, bad_field in [
        (("cust-2", 10, token), "page_token"),
        (("", 10, "garbage!"), "page_token"),
        # Issued by another key (another orders database): refused, not misread.
        (("cust-1", 10, encode_page_token(PageTokens(b"o" * 32), 42, "cust-1")), "page_token"),
        (("", -1, ""), "page_size"),
        (("", 501, ""), "page_size"),
    ]:
        with pytest.raises(InvalidArgument) as exc:
            validate_list_orders(*args, tokens)
        assert exc.value.field == bad_field


def test_a_pricing_failure_is_never_in_doubt() -> None:
    assert not saga.step_failed(Step.PRICE, "UNAVAILABLE", "catalog down").in_doubt


def test_an_event_keeps_the_detail_it_was_written_with() -> None:
    written = Event(ORDER, 1, T0, PLACED, detail="as logged back then")
    assert written.detail == "as logged back then"
    assert Event(ORDER, 1, T0, PLACED).detail == PLACED.detail
