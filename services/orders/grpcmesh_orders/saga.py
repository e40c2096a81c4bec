"""The order saga as a pure state machine: the next action is a function of the event log alone.

Forward: PLACED -> price (catalog) -> reserve (inventory) -> charge (payments) -> commit
(inventory) -> CONFIRMED. The first failing step appends STEP_FAILED and the saga compensates:
release stock, refund (or resolve an in-doubt charge), CANCELLED.

Because nothing but the log decides, a saga interrupted anywhere (process killed, compensation
retries exhausted) is resumed by folding its log and calling :func:`next_action` again.

Recovery rule (why resuming from any log is safe):

* Every remote step is idempotent per order, so re-sending one whose outcome was not recorded
  has the effect of sending it once: ReserveStock/CommitStock/ReleaseStock are keyed by order id,
  and Charge/Refund use idempotency keys derived deterministically from the order id
  (:func:`charge_key`, :func:`refund_key`).
* Hence a log without STEP_FAILED continues **forward** from the first step with no success
  event, re-sending that step. A charge that was sent but not recorded before a crash is
  re-sent with the same key and payments returns the first outcome - never a second charge.
* A log with STEP_FAILED continues **compensating**, money first, stock last:

  1. If STOCK_COMMITTED is in the log, the sale happened (commit only follows a capture) and
     cannot be undone: roll forward to CONFIRMED.
  2. If the commit failed with an unknown outcome, settle it first by re-sending it
     (idempotent): if it succeeds the sale stands (rule 1); if inventory refuses it, that
     refusal is logged as a second, definite STEP_FAILED for the commit and compensation goes
     on. Money is never returned for goods that may have been sold.
  3. Refund a recorded capture (key :func:`refund_key`).
  4. If the charge failed with an unknown outcome it may have captured money. PaymentService
     cannot look a payment up by idempotency key, so the charge is re-sent with its key:
     payments returns the first outcome if it landed (then it is recorded and refunded by
     rule 3), or captures now (refunded likewise), or declines, logged as a second, definite
     STEP_FAILED for the charge (nothing to refund). A charge that **never left** this process's
     side of the mesh (``StepFailed.sent`` false: the caller's own sidecar refused it) is not
     in doubt: it is neither re-sent nor refunded.
  5. Release stock if the reserve may have been sent (the failed step is reserve or later):
     ReleaseStock is idempotent and leaves a tombstone, so a reserve that timed out but landed,
     or lands later, is undone.
  6. CANCELLED, with the failed step as the reason.

  Release comes after every money question is settled, so no log (and no moment between two
  of its events) has money captured while the order's stock is released: at every point the
  order either still holds its stock or holds no money. A later definite STEP_FAILED only ever
  settles the doubt of the first failure's step; the first failure stays the order's reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from grpcmesh_orders.events import (
    Cancelled,
    Confirmed,
    Event,
    LineItem,
    Money,
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
)

INT64_MAX = 2**63 - 1

# Status codes after which the callee certainly did not apply the request. Any other failure
# (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...) may come after the effect landed: a proxy or a
# lost response can turn a success into an error.
_DEFINITE_FAILURES = frozenset(
    {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "OUT_OF_RANGE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "UNIMPLEMENTED",
    }
)


def outcome_in_doubt(code: str) -> bool:
    """Whether a call that failed with status ``code`` may nevertheless have taken effect."""
    return code not in _DEFINITE_FAILURES


def step_failed(step: Step, code: str, message: str, *, sent: bool = True) -> StepFailed:
    """The STEP_FAILED payload for a remote call to ``step`` that failed with status ``code``;
    ``sent`` false when the call certainly never left (see ``clients.never_sent``)."""
    # Pricing only reads, so its outcome is never in doubt; an unsent call had no outcome.
    in_doubt = sent and step is not Step.PRICE and outcome_in_doubt(code)
    return StepFailed(step, code, message, in_doubt=in_doubt, sent=sent)


def charge_key(order_id: str) -> str:
    """The Charge idempotency key: fixed per order so every (re)send charges at most once."""
    return f"order-{order_id}-charge"


def refund_key(order_id: str) -> str:
    return f"order-{order_id}-refund"


# --- progress: the saga's view of the log -----------------------------------------------------


@dataclass(frozen=True)
class SagaProgress:
    order_id: str
    placed: Placed
    priced: Priced | None = None
    reserved: bool = False
    payment: PaymentCaptured | None = None
    committed: bool = False
    failure: StepFailed | None = None
    released: bool = False
    refunded: bool = False
    finished: bool = False
    # A later, definite failure of the first failure's step: its doubt is settled (not landed).
    settled: bool = False

    @property
    def reserve_may_have_happened(self) -> bool:
        if self.reserved:
            return True
        failure = self.failure
        if failure is None or failure.step is Step.PRICE:
            return False
        # A reserve that never left cannot have reserved anything.
        return failure.step is not Step.RESERVE or failure.sent

    def _in_doubt(self, step: Step) -> bool:
        return (
            self.failure is not None
            and self.failure.step is step
            and self.failure.in_doubt
            and not self.settled
        )

    @property
    def charge_in_doubt(self) -> bool:
        return self.payment is None and self._in_doubt(Step.CHARGE)

    @property
    def commit_in_doubt(self) -> bool:
        return not self.committed and self._in_doubt(Step.COMMIT)

    @property
    def money_held(self) -> bool:
        """Money is or may be captured for this order and not refunded."""
        return (self.payment is not None and not self.refunded) or self.charge_in_doubt


def progress(events: Iterable[Event]) -> SagaProgress:
    """Folds a log into what the saga has done. The log's shape is checked by the projection."""
    state: SagaProgress | None = None
    for event in events:
        data = event.data
        if state is None:
            if not isinstance(data, Placed):
                raise ValueError(f"order {event.order_id}: the log must start with PLACED")
            state = SagaProgress(order_id=event.order_id, placed=data)
            continue
        match data:
            case Priced():
                state = replace(state, priced=data)
            case StockReserved():
                state = replace(state, reserved=True)
            case PaymentCaptured():
                state = replace(state, payment=data)
            case StockCommitted():
                state = replace(state, committed=True)
            case StepFailed():
                first = state.failure
                if first is None:
                    state = replace(state, failure=data)
                elif data.step is first.step and not data.in_doubt:
                    # Compensation found the first failure's in-doubt step did not land.
                    state = replace(state, settled=True)
            case StockReleased():
                state = replace(state, released=True)
            case PaymentRefunded():
                state = replace(state, refunded=True)
            case Confirmed() | Cancelled():
                state = replace(state, finished=True)
            case Placed():
                raise ValueError(f"order {event.order_id}: PLACED twice")
    if state is None:
        raise ValueError("an order log cannot be empty")
    return state


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceItems:
    items: tuple[LineItem, ...]
    currency_code: str


@dataclass(frozen=True)
class ReserveStock:
    items: tuple[LineItem, ...]


@dataclass(frozen=True)
class ChargePayment:
    idempotency_key: str
    customer_id: str
    amount: Money


@dataclass(frozen=True)
class CommitStock:
    pass


@dataclass(frozen=True)
class Confirm:
    pass


@dataclass(frozen=True)
class ResolveCommit:
    """Re-send an in-doubt commit: success means the sale stands, a refusal that it never
    landed (logged as a definite STEP_FAILED for the commit)."""


@dataclass(frozen=True)
class ReleaseStock:
    pass


@dataclass(frozen=True)
class RefundPayment:
    idempotency_key: str
    payment_id: str


@dataclass(frozen=True)
class ResolveCharge:
    """Re-send an in-doubt charge with its key to learn (or settle) its outcome."""

    idempotency_key: str
    customer_id: str
    amount: Money


@dataclass(frozen=True)
class Cancel:
    reason: str


@dataclass(frozen=True)
class Finished:
    pass


ForwardAction = PriceItems | ReserveStock | ChargePayment | CommitStock | Confirm
CompensatingAction = ResolveCommit | RefundPayment | ResolveCharge | ReleaseStock | Cancel
Action = ForwardAction | CompensatingAction | Finished


def next_action(p: SagaProgress) -> Action:
    """What to do next for an order whose log folds to ``p`` (see the module docstring)."""
    if p.finished:
        return Finished()
    if p.failure is None:
        return _forward(p)
    if p.committed:
        return Confirm()
    if p.commit_in_doubt:
        return ResolveCommit()
    if p.payment is not None and not p.refunded:
        return RefundPayment(refund_key(p.order_id), p.payment.payment_id)
    if p.charge_in_doubt:
        assert p.priced is not None  # a charge is only ever sent for a priced order
        return ResolveCharge(charge_key(p.order_id), p.placed.customer_id, p.priced.total)
    assert not p.money_held  # the invariant the order of these rules exists for
    if p.reserve_may_have_happened and not p.released:
        return ReleaseStock()
    return Cancel(cancel_reason(p.failure))


def _forward(p: SagaProgress) -> ForwardAction:
    if p.priced is None:
        return PriceItems(p.placed.items, p.placed.currency_code)
    if not p.reserved:
        return ReserveStock(p.placed.items)
    if p.payment is None:
        return ChargePayment(charge_key(p.order_id), p.placed.customer_id, p.priced.total)
    if not p.committed:
        return CommitStock()
    return Confirm()


def cancel_reason(failure: StepFailed) -> str:
    match failure.step, failure.code:
        case Step.CHARGE, "FAILED_PRECONDITION":
            return f"payment declined: {failure.message}"
        case Step.RESERVE, "FAILED_PRECONDITION":
            return f"out of stock: {failure.message}"
        case Step.PRICE, _:
            return f"pricing failed: {failure.message}"
        case _:
            return failure.detail


# --- pricing -----------------------------------------------------------------------------------


def price_order(
    items: Sequence[LineItem], currency_code: str, prices: Mapping[str, Money]
) -> Priced | StepFailed:
    """Prices ``items`` from the catalogue's ``prices`` (product id -> unit price).

    A product priced in another currency fails the step rather than being converted: the order
    is paid in exactly one currency and this service has no exchange rates.
    """
    lines: list[PricedLine] = []
    total = 0
    for index, item in enumerate(items):
        price = prices.get(item.product_id)
        if price is None:
            return StepFailed(
                Step.PRICE,
                "NOT_FOUND",
                f"items[{index}]: unknown product {item.product_id!r}",
                in_doubt=False,
            )
        if price.currency_code != currency_code:
            return StepFailed(
                Step.PRICE,
                "",
                f"items[{index}]: product {item.product_id!r} is priced in "
                f"{price.currency_code}, the order in {currency_code}",
                in_doubt=False,
            )
        if price.amount_minor < 0:
            return StepFailed(
                Step.PRICE,
                "",
                f"items[{index}]: product {item.product_id!r} has a negative price",
                in_doubt=False,
            )
        line = PricedLine(item.product_id, item.quantity, price)
        total += line.subtotal_minor
        lines.append(line)
    if total > INT64_MAX:
        return StepFailed(Step.PRICE, "", "the order total exceeds the largest amount", False)
    if total == 0:
        # PaymentService only charges positive amounts; a free order is a catalogue error.
        return StepFailed(Step.PRICE, "", "the order total is zero", in_doubt=False)
    return Priced(tuple(lines), Money(currency_code, total))
