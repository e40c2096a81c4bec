"""Runs sagas: folds an order's log, asks :mod:`grpcmesh_orders.saga` for the next action,
performs it against the other services, appends the resulting events, repeats until terminal.

One task per order and process: a second PlaceOrder with the same key awaits the running task
instead of starting another. Saga tasks are detached from the RPC that started them: they
outlive the caller's deadline and cancellation, and their calls carry the saga's own per-step
deadlines rather than the (possibly short) deadline of the PlaceOrder that spawned them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from grpcmesh_kit import Unavailable, detached_context
from grpcmesh_orders import saga
from grpcmesh_orders.clients import CallFailed, ShopClients
from grpcmesh_orders.events import (
    Cancelled,
    Confirmed,
    EventData,
    LineItem,
    Money,
    OrderView,
    PaymentCaptured,
    PaymentRefunded,
    Step,
    StepFailed,
    StockCommitted,
    StockReleased,
    StockReserved,
    last_sequence,
    project,
)
from grpcmesh_orders.settings import OrdersSettings
from grpcmesh_orders.storage import ConcurrentAppend, OrderRepository

log = logging.getLogger(__name__)

# A saga appends at most a dozen events; far more means a decision loop, which must not spin.
MAX_EVENTS = 64


class CompensationStalled(Exception):
    """A compensation call kept failing; the order stays pending until resumed."""


class OrderNotifier:
    """In-process wake-ups per order, for WatchOrder.

    A watcher takes ``waiter()`` *before* reading the log and waits on it only if the read
    showed nothing new, so an append that lands between the read and the wait still wakes it.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Event] = {}

    def waiter(self, order_id: str) -> asyncio.Event:
        return self._waiters.setdefault(order_id, asyncio.Event())

    def changed(self, order_id: str) -> None:
        event = self._waiters.pop(order_id, None)
        if event is not None:
            event.set()


class SagaRunner:
    def __init__(
        self,
        repo: OrderRepository,
        clients: ShopClients,
        notifier: OrderNotifier,
        settings: Callable[[], OrdersSettings],
    ) -> None:
        self._repo = repo
        self._clients = clients
        self._notifier = notifier
        # A callable: settings can be reloaded while sagas run.
        self._settings = settings
        self._tasks: dict[str, asyncio.Task[OrderView]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False

    def running(self, order_id: str) -> bool:
        return order_id in self._tasks

    def ensure(self, order_id: str) -> asyncio.Task[OrderView]:
        """The task driving ``order_id``'s saga in this process, started if there is none."""
        task = self._tasks.get(order_id)
        if task is None:
            if self._closing:
                raise Unavailable("orders is shutting down; retry with the same idempotency_key")
            task = asyncio.create_task(
                self._drive(order_id), name=f"saga-{order_id}", context=detached_context()
            )
            self._tasks[order_id] = task
            task.add_done_callback(partial(self._done, order_id))
        return task

    def _done(self, order_id: str, task: asyncio.Task[OrderView]) -> None:
        if self._tasks.get(order_id) is task:
            del self._tasks[order_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("saga of order %s failed", order_id, exc_info=exc)

    async def resume_pending(self) -> int:
        """Starts every order whose log is not terminal (see saga's recovery rule); returns
        how many. Runs them in the background, at most ``resume_concurrency`` at a time."""
        order_ids = await self._repo.pending()
        if order_ids:
            log.info("resuming %d interrupted order(s)", len(order_ids))
            task = asyncio.create_task(self._resume(order_ids), name="resume-orders")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return len(order_ids)

    async def _resume(self, order_ids: Sequence[str]) -> None:
        limit = asyncio.Semaphore(self._settings().resume_concurrency)

        async def one(order_id: str) -> None:
            async with limit:
                # asyncio.wait neither raises the saga's error (already logged) nor cancels it.
                await asyncio.wait({self.ensure(order_id)})

        await asyncio.gather(*(one(order_id) for order_id in order_ids))

    async def close(self) -> None:
        """Stops every saga where it is; the log lets the next start resume them."""
        self._closing = True
        tasks: list[asyncio.Task[OrderView] | asyncio.Task[None]] = [
            *self._background,
            *self._tasks.values(),
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drive(self, order_id: str) -> OrderView:
        events = await self._repo.events(order_id)
        while True:
            action = saga.next_action(saga.progress(events))
            if isinstance(action, saga.Finished):
                return project(events)
            if len(events) >= MAX_EVENTS:
                raise RuntimeError(f"order {order_id}: saga did not finish in {MAX_EVENTS} events")
            log.debug("order %s: %s", order_id, action)
            try:
                produced = await self._execute(order_id, action)
            except CompensationStalled as exc:
                log.warning("order %s left compensating: %s", order_id, exc)
                return project(events)
            try:
                events = await self._repo.append(order_id, last_sequence(events), produced)
            except ConcurrentAppend:
                # Another process moved this order on; its calls were idempotent like ours.
                log.info("order %s: concurrent append, re-reading the log", order_id)
                events = await self._repo.events(order_id)
            else:
                self._notifier.changed(order_id)
                if events[-1].type.terminal:
                    log.info("order %s %s", order_id, events[-1].detail)

    async def _execute(self, order_id: str, action: saga.Action) -> list[EventData]:
        c = self._clients
        match action:
            case saga.PriceItems(items=items, currency_code=currency):
                return [await self._price(items, currency)]
            case saga.ReserveStock(items=items):
                return [await _step(Step.RESERVE, c.reserve(order_id, items), StockReserved())]
            case saga.ChargePayment(idempotency_key=key, customer_id=customer, amount=amount):
                try:
                    outcome = await c.charge(key, order_id, customer, amount)
                except CallFailed as exc:
                    return [saga.step_failed(Step.CHARGE, exc.code, exc.message)]
                if not outcome.captured:
                    # A repeated charge returns the first outcome, which may be a decline.
                    reason = outcome.decline_reason or "payment declined"
                    return [StepFailed(Step.CHARGE, "FAILED_PRECONDITION", reason, False)]
                return [PaymentCaptured(outcome.payment_id, outcome.amount)]
            case saga.CommitStock():
                return [await _step(Step.COMMIT, c.commit(order_id), StockCommitted())]
            case saga.Confirm():
                return [Confirmed()]
            case saga.Cancel(reason=reason):
                return [Cancelled(reason)]
            case saga.ReleaseStock(commit_may_have_landed=may_have_landed):
                return await self._compensate(
                    "release", order_id, partial(self._release, order_id, may_have_landed)
                )
            case saga.RefundPayment(idempotency_key=key, payment_id=payment_id):
                return await self._compensate(
                    "refund", order_id, partial(self._refund, key, payment_id)
                )
            case saga.ResolveCharge():
                return await self._compensate(
                    "charge resolution", order_id, partial(self._resolve, order_id, action)
                )
            case saga.Finished():
                return []

    async def _price(self, items: Sequence[LineItem], currency: str) -> EventData:
        product_ids = sorted({item.product_id for item in items})
        results = await asyncio.gather(
            *(self._clients.price(p) for p in product_ids), return_exceptions=True
        )
        prices: dict[str, Money] = {}
        for product_id, result in zip(product_ids, results, strict=True):
            if isinstance(result, Money):
                prices[product_id] = result
            elif isinstance(result, CallFailed) and result.code == "NOT_FOUND":
                continue  # price_order reports the unknown product by its item index
            elif isinstance(result, CallFailed):
                return saga.step_failed(Step.PRICE, result.code, result.message)
            else:
                raise result
        return saga.price_order(items, currency, prices)

    async def _release(self, order_id: str, commit_may_have_landed: bool) -> list[EventData]:
        try:
            await self._clients.release(order_id)
        except CallFailed as exc:
            if exc.code != "FAILED_PRECONDITION" or not commit_may_have_landed:
                raise
            # Inventory refuses to release committed stock, so the commit we saw fail landed.
            # Re-sending it (idempotent) confirms that before the saga rolls forward.
            await self._clients.commit(order_id)
            return [StockCommitted(recovered=True)]
        return [StockReleased()]

    async def _refund(self, key: str, payment_id: str) -> list[EventData]:
        await self._clients.refund(key, payment_id)
        return [PaymentRefunded(payment_id)]

    async def _resolve(self, order_id: str, action: saga.ResolveCharge) -> list[EventData]:
        try:
            outcome = await self._clients.charge(
                action.idempotency_key, order_id, action.customer_id, action.amount
            )
        except CallFailed as exc:
            if exc.code != "FAILED_PRECONDITION":
                raise
            return [Cancelled(action.cancel_reason)]  # declined: no money moved
        if not outcome.captured:
            return [Cancelled(action.cancel_reason)]
        return [PaymentCaptured(outcome.payment_id, outcome.amount, recovered=True)]

    async def _compensate(
        self, what: str, order_id: str, attempt: Callable[[], Awaitable[list[EventData]]]
    ) -> list[EventData]:
        """Compensations must eventually succeed, so transient failures are retried with
        bounded, jittered backoff; if they still fail the saga stalls (and is resumed later)."""
        s = self._settings()

        def warn(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "order %s: %s attempt %d failed: %s", order_id, what, state.attempt_number, exc
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.compensation_attempts),
            # Full jitter: many sagas compensating against one recovering service spread out.
            wait=wait_random_exponential(
                multiplier=s.compensation_backoff_seconds, max=s.compensation_max_backoff_seconds
            ),
            retry=retry_if_exception_type(CallFailed),
            before_sleep=warn,
            reraise=True,
        )
        try:
            async for attempt_state in retrying:
                with attempt_state:
                    return await attempt()
        except CallFailed as exc:
            raise CompensationStalled(f"{what}: {exc}") from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")


async def _step(step: Step, call: Awaitable[None], success: EventData) -> EventData:
    try:
        await call
    except CallFailed as exc:
        return saga.step_failed(step, exc.code, exc.message)
    return success
