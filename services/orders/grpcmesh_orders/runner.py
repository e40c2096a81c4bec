"""Runs sagas: folds an order's log, asks :mod:`grpcmesh_orders.saga` for the next action,
performs it against the other services, appends the resulting events, repeats until terminal.

One task per order and process: a second PlaceOrder with the same key awaits the running task
instead of starting another. Saga tasks are detached from the RPC that started them: they
outlive the caller's deadline and cancellation, and their calls carry the saga's own per-step
deadlines rather than the (possibly short) deadline of the PlaceOrder that spawned them.

One process across replicas: a saga is driven only under its lease (storage.claim), renewed
before every remote call and with every append. A process that finds the lease held elsewhere
follows the log until the order ends or the lease expires, then takes over. The recovery loop
(:meth:`SagaRunner.recover_forever`) scans for PENDING orders whose lease expired - their
owner died, hung, or gave up on a compensation that kept failing - and drives them, so every
saga finishes without a client retry or a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
    wait_random_exponential,
)

from grpcmesh_kit import Unavailable, detached_context
from grpcmesh_orders import saga
from grpcmesh_orders.clients import CallFailed, ShopClients
from grpcmesh_orders.events import (
    Cancelled,
    Confirmed,
    Event,
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
from grpcmesh_orders.storage import ConcurrentAppend, Lease, LeaseLost, OrderRepository

log = logging.getLogger(__name__)

T = TypeVar("T")

# A saga appends at most a dozen events; far more means a decision loop, which must not spin.
MAX_EVENTS = 64


class CompensationStalled(Exception):
    """A compensation call kept failing; the order stays pending until resumed."""


def new_owner() -> str:
    """A lease owner name unique to this process (host and pid for people reading the table)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


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
        owner: str | None = None,
    ) -> None:
        self.owner = owner or new_owner()
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

    def lease(self) -> Lease:
        return Lease(self.owner, self._settings().saga_lease_seconds)

    async def resume_pending(self) -> int:
        """Starts every PENDING order no other process holds (see saga's recovery rule) and
        returns how many. Runs them in the background, at most ``resume_concurrency`` at a
        time; :meth:`recover_forever` does the same periodically."""
        order_ids = await self._claimable()
        if order_ids:
            log.info("resuming %d interrupted order(s)", len(order_ids))
            task = asyncio.create_task(self._resume(order_ids), name="resume-orders")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return len(order_ids)

    async def _claimable(self) -> list[str]:
        limit = 4 * self._settings().resume_concurrency
        return await self._repo.claimable(self.owner, limit)

    def start_recovery(self) -> None:
        """Runs :meth:`recover_forever` in the background until :meth:`close`."""
        task = asyncio.create_task(self.recover_forever(), name="recover-orders")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def recover_forever(self) -> None:
        """Every ``recovery_interval_seconds``, drives the PENDING orders whose lease expired
        (a replica died or hung mid-saga, or a compensation stalled) until they end."""
        while True:
            await asyncio.sleep(self._settings().recovery_interval_seconds)
            try:
                order_ids = [o for o in await self._claimable() if o not in self._tasks]
                if order_ids:
                    log.info("recovering %d order(s) whose saga lease expired", len(order_ids))
                    await self._resume(order_ids)
            except Exception:
                # A locked or briefly unavailable database must not end recovery for good.
                log.exception("saga recovery scan failed; retrying")

    async def _resume(self, order_ids: Sequence[str]) -> None:
        limit = asyncio.Semaphore(self._settings().resume_concurrency)

        async def one(order_id: str) -> None:
            async with limit:
                # asyncio.wait neither raises the saga's error (already logged) nor cancels it.
                await asyncio.wait({self.ensure(order_id)})

        await asyncio.gather(*(one(order_id) for order_id in order_ids))

    async def close(self) -> None:
        """Stops every saga where it is and gives up this process's leases, so another
        replica (or the next start) resumes them at once rather than after they expire."""
        self._closing = True
        tasks: list[asyncio.Task[OrderView] | asyncio.Task[None]] = [
            *self._background,
            *self._tasks.values(),
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._repo.release_leases(self.owner)
        except Exception:
            log.exception("could not release saga leases; they expire on their own")

    async def _hold(self, order_id: str) -> None:
        """Renews this process's lease on ``order_id``; LeaseLost if another process has it."""
        if not await self._repo.claim(order_id, self.lease()):
            raise LeaseLost(f"order {order_id}: the saga lease is held by another process")

    async def _follow(self, order_id: str) -> list[Event]:
        """Waits while another process drives ``order_id``: returns its log once it is terminal
        or once this process holds the lease (the other's expired)."""
        while True:
            events = await self._repo.events(order_id)
            if events[-1].type.terminal or await self._repo.claim(order_id, self.lease()):
                return events
            wake = self._notifier.waiter(order_id)
            # Appends by another process do not wake us: poll, but wake early on our own.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._settings().recovery_interval_seconds)

    async def _drive(self, order_id: str) -> OrderView:
        events = await self._repo.events(order_id)
        loop = asyncio.get_running_loop()
        renewed = -float("inf")  # when this process last claimed or renewed the lease
        while True:
            action = saga.next_action(saga.progress(events))
            if isinstance(action, saga.Finished):
                return project(events)
            if len(events) >= MAX_EVENTS:
                raise RuntimeError(f"order {order_id}: saga did not finish in {MAX_EVENTS} events")
            log.debug("order %s: %s", order_id, action)
            try:
                # Every append renews the lease in its transaction; claim separately only when
                # what is left of it might not outlast the next call (a resumed saga, a slow
                # step), not before every step.
                s = self._settings()
                left = s.saga_lease_seconds - (loop.time() - renewed)
                if left < 1.5 * s.step_deadline_seconds:
                    await self._hold(order_id)
                    renewed = loop.time()
                produced = await self._execute(order_id, action)
                events = await self._repo.append(
                    order_id, last_sequence(events), produced, self.lease()
                )
                renewed = loop.time()
            except CompensationStalled as exc:
                # The lease stays: this replica's recovery loop tries again at its next scan,
                # any other replica's once the lease expires.
                log.warning("order %s left compensating: %s", order_id, exc)
                return project(events)
            except LeaseLost:
                log.info("order %s is driven by another process; following it", order_id)
                events = await self._follow(order_id)
                renewed = loop.time()
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
                reserve = partial(c.reserve, order_id, items)
                return [await self._step(order_id, Step.RESERVE, reserve, StockReserved())]
            case saga.ChargePayment(idempotency_key=key, customer_id=customer, amount=amount):
                try:
                    outcome = await self._resend_unsent(
                        f"order {order_id}: charge",
                        partial(c.charge, key, order_id, customer, amount),
                    )
                except CallFailed as exc:
                    return [saga.step_failed(Step.CHARGE, exc.code, exc.message, sent=exc.sent)]
                if not outcome.captured:
                    # A repeated charge returns the first outcome, which may be a decline.
                    reason = outcome.decline_reason or "payment declined"
                    return [StepFailed(Step.CHARGE, "FAILED_PRECONDITION", reason, False)]
                return [PaymentCaptured(outcome.payment_id, outcome.amount)]
            case saga.CommitStock():
                commit = partial(c.commit, order_id)
                return [await self._step(order_id, Step.COMMIT, commit, StockCommitted())]
            case saga.Confirm():
                return [Confirmed()]
            case saga.Cancel(reason=reason):
                return [Cancelled(reason)]
            case saga.ResolveCommit():
                return await self._compensate(
                    "commit resolution", order_id, partial(self._resolve_commit, order_id)
                )
            case saga.RefundPayment(idempotency_key=key, payment_id=payment_id):
                return await self._compensate(
                    "refund", order_id, partial(self._refund, key, payment_id)
                )
            case saga.ResolveCharge():
                return await self._compensate(
                    "charge resolution", order_id, partial(self._resolve_charge, order_id, action)
                )
            case saga.ReleaseStock():
                return await self._compensate("release", order_id, partial(self._release, order_id))
            case saga.Finished():
                return []

    async def _price(self, items: Sequence[LineItem], currency: str) -> EventData:
        product_ids = sorted({item.product_id for item in items})
        results = await asyncio.gather(
            *(
                self._resend_unsent(f"price of {p}", partial(self._clients.price, p))
                for p in product_ids
            ),
            return_exceptions=True,
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

    async def _resolve_commit(self, order_id: str) -> list[EventData]:
        try:
            await self._clients.commit(order_id)
        except CallFailed as exc:
            if not exc.sent or saga.outcome_in_doubt(exc.code):
                raise  # no answer about the commit yet: try again
            # Inventory refused it (e.g. the reservation is gone): the first commit never
            # landed either, so there is no sale and the money goes back.
            return [saga.step_failed(Step.COMMIT, exc.code, exc.message)]
        return [StockCommitted(recovered=True)]

    async def _release(self, order_id: str) -> list[EventData]:
        await self._clients.release(order_id)
        return [StockReleased()]

    async def _refund(self, key: str, payment_id: str) -> list[EventData]:
        await self._clients.refund(key, payment_id)
        return [PaymentRefunded(payment_id)]

    async def _resolve_charge(self, order_id: str, action: saga.ResolveCharge) -> list[EventData]:
        try:
            outcome = await self._clients.charge(
                action.idempotency_key, order_id, action.customer_id, action.amount
            )
        except CallFailed as exc:
            if not exc.sent or saga.outcome_in_doubt(exc.code):
                raise
            return [saga.step_failed(Step.CHARGE, exc.code, exc.message)]  # no money moved
        if not outcome.captured:
            reason = outcome.decline_reason or "payment declined"
            return [StepFailed(Step.CHARGE, "FAILED_PRECONDITION", reason, False)]
        return [PaymentCaptured(outcome.payment_id, outcome.amount, recovered=True)]

    async def _step(
        self, order_id: str, step: Step, call: Callable[[], Awaitable[None]], success: EventData
    ) -> EventData:
        try:
            await self._resend_unsent(f"order {order_id}: {step.value}", call)
        except CallFailed as exc:
            return saga.step_failed(step, exc.code, exc.message, sent=exc.sent)
        return success

    async def _resend_unsent(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, made again (``unsent_step_attempts`` in all, with jittered backoff) while
        it fails without having left this side of the mesh: it had no effect, so a moment's
        gap in the caller's sidecar does not cancel the order. Any other failure, or the last
        unsent one, is raised."""
        s = self._settings()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.unsent_step_attempts),
            # A floor under the jitter: the waits must span the gap, not all land in its start.
            wait=wait_exponential_jitter(
                multiplier=s.compensation_backoff_seconds,
                max=s.compensation_max_backoff_seconds,
                jitter=s.compensation_backoff_seconds,
            ),
            retry=retry_if_exception(lambda exc: isinstance(exc, CallFailed) and not exc.sent),
            before_sleep=lambda state: log.warning(
                "%s: try %d never sent, resending: %s",
                what,
                state.attempt_number,
                state.outcome.exception() if state.outcome else None,
            ),
            reraise=True,
        )
        async for attempt_state in retrying:
            with attempt_state:
                return await call()
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _compensate(
        self, what: str, order_id: str, attempt: Callable[[], Awaitable[list[EventData]]]
    ) -> list[EventData]:
        """Compensations must eventually succeed, so transient failures are retried with
        bounded, jittered backoff; if they still fail the saga stalls, and a recovery loop
        resumes it (retried until done). The lease is renewed before every try."""
        s = self._settings()

        async def renewed() -> list[EventData]:
            await self._hold(order_id)
            return await attempt()

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
                    return await renewed()
        except CallFailed as exc:
            raise CompensationStalled(f"{what}: {exc}") from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")
