"""How orders tells "never left" from "outcome unknown" (issue 15, item 4), against real Envoy.

A caller's own sidecar answers some calls itself before sending anything upstream (no healthy
endpoint, connection refused): those certainly had no effect. Every other failure - a route
timeout, a reset after connecting, anything the callee's sidecar or the callee said - may come
after the effect. ``clients.never_sent`` must tell them apart from what gRPC hands the caller,
and a charge that never left is never refunded: it is resent, a few times with backoff (it had
no effect, so that is safe), and if it never gets out the order is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpcmesh.shop.v1 import orders_pb2
from grpcmesh_orders.clients import never_sent
from tests.loopback import LOCALHOST, free_port, poll
from tests.services.orders_fixtures import (
    CHARGE,
    Shop,
    assert_books_from_stores,
    event_names,
    place,
    running_shop,
    stock_of,
    watch_all,
)
from tests.services.static_envoy import Route, cluster, static_envoy

pytestmark = pytest.mark.timeout(60)


class _App(grpc.GenericRpcHandler):
    """The callee: /svc.Slow sleeps past the route timeout, /svc.AppUnavailable answers
    UNAVAILABLE "no healthy upstream" itself (an app may say anything), the rest succeed."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        method = details.method

        async def behaviour(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            if method.startswith("/svc.Slow/"):
                await asyncio.sleep(5)
            if method.startswith("/svc.AppUnavailable/"):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "no healthy upstream")
            return b"ok"

        return grpc.unary_unary_rpc_method_handler(behaviour)


@pytest.fixture
async def caller_sidecar(tmp_path: Path) -> AsyncIterator[str]:
    """The caller's sidecar in front of a callee's sidecar in front of the app."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_App(),))
    app = server.add_insecure_port(f"{LOCALHOST}:0")
    await server.start()
    closed = free_port()  # nothing listens here
    try:
        async with static_envoy(
            tmp_path,
            "callee",
            [Route("/svc.CalleeNoHealthy/", "empty"), Route("/", "app")],
            [cluster("empty", None), cluster("app", app)],
        ) as callee:
            callee_port = int(callee.rpartition(":")[2])
            async with static_envoy(
                tmp_path,
                "caller",
                [
                    Route("/svc.NoHealthy/", "empty"),
                    Route("/svc.Refused/", "closed"),
                    Route("/svc.RetriedRefused/", "closed", retry_on="connect-failure", retries=1),
                    Route("/svc.Slow/", "app", timeout="0.3s"),
                    Route("/", "callee"),
                ],
                [
                    cluster("empty", None),
                    cluster("closed", closed),
                    cluster("app", app),
                    cluster("callee", callee_port),
                ],
            ) as caller:
                yield caller
    finally:
        await server.stop(0)


CASES = [
    # The caller's own sidecar had no endpoint to send to (response flag UH).
    ("NoHealthy", True),
    # It could not connect upstream (UF): nothing was written.
    ("Refused", True),
    # It retried: an earlier attempt may have landed, whatever the last one says.
    ("RetriedRefused", False),
    # A route timeout: the request went upstream and may have run.
    ("Slow", False),
    # The callee's sidecar said "no healthy upstream": relayed, so it carries the upstream time.
    ("CalleeNoHealthy", False),
    # The app itself used the same words.
    ("AppUnavailable", False),
]


@pytest.mark.parametrize(("method", "unsent"), CASES, ids=[c[0] for c in CASES])
async def test_only_the_callers_own_sidecar_refusals_count_as_never_sent(
    caller_sidecar: str, method: str, unsent: bool
) -> None:
    async with grpc.aio.insecure_channel(caller_sidecar) as channel:
        send: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/svc.{method}/Do"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await send(b"x", timeout=5)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert never_sent(error) is unsent, (error.details(), error.trailing_metadata())


async def test_no_connection_at_all_is_never_sent() -> None:
    async with grpc.aio.insecure_channel(f"{LOCALHOST}:{free_port()}") as channel:
        send: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/svc.X/Do")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await send(b"x", timeout=5)
    assert never_sent(caught.value)


async def test_a_charge_its_own_sidecar_keeps_refusing_is_cancelled_without_refund(
    tmp_path: Path,
) -> None:
    """Payments has no healthy endpoint in the orders sidecar's view: the charge never leaves.
    Before, orders treated it as "outcome unknown", re-sent it to learn the outcome and - when
    that got through - refunded it (issue 15: 63 and 103 charge-then-refund pairs); when it did
    not, the order stayed PENDING."""
    async with payments_through_a_sidecar(tmp_path, None) as shop:
        order = await place(shop.order_stub, "k", timeout=20)
        events = await watch_all(shop.order_stub, order.order_id)
        assert order.state == orders_pb2.ORDER_STATE_CANCELLED
        assert "no healthy upstream" in order.failure_reason
        assert event_names(events) == [
            "PLACED", "PRICED", "STOCK_RESERVED", "STEP_FAILED", "STOCK_RELEASED", "CANCELLED"
        ]  # fmt: skip
        assert "[never sent]" in events[3].detail
        assert shop.faults.calls[CHARGE] == 0  # payments never saw a charge, nor a refund
        report = assert_books_from_stores(shop)
        assert (report.captured, report.refunded) == (0, 0)
        assert (await stock_of(shop, "sku-0001")).available == 5


async def test_a_charge_its_own_sidecar_could_not_send_yet_is_resent_and_confirmed(
    tmp_path: Path,
) -> None:
    """A moment's gap in the caller's sidecar (here payments' endpoint refuses connections until
    the first charge has failed on it; in the mesh, an endpoint not pushed yet) does not cancel
    the order: the call never left, so orders resends it and the order is confirmed. Before,
    the first such failure cancelled the order (CI saw one cancelled right after start)."""
    # Bound, not listening: connections to it are refused until it listens.
    with socket.socket() as closed:
        closed.bind((LOCALHOST, 0))
        async with payments_through_a_sidecar(tmp_path, closed.getsockname()[1]) as shop:
            with runner_warnings() as warnings:
                placing = asyncio.create_task(place(shop.order_stub, "k", timeout=20))

                async def resending() -> bool:
                    return any("charge: try 1 never sent" in w for w in warnings)

                await poll(resending, "orders to resend a charge that never left")
                async with forwarding(closed, shop.targets["payments"]):
                    order = await placing
            assert order.state == orders_pb2.ORDER_STATE_CONFIRMED, order.failure_reason
            events = await watch_all(shop.order_stub, order.order_id)
            assert event_names(events) == [
                "PLACED", "PRICED", "STOCK_RESERVED",
                "PAYMENT_CAPTURED", "STOCK_COMMITTED", "CONFIRMED",
            ]  # fmt: skip
            assert shop.faults.calls[CHARGE] == 1  # the one that got out
            report = assert_books_from_stores(shop)
            assert (report.captured, report.refunded) == (1, 0)


@asynccontextmanager
async def payments_through_a_sidecar(tmp_path: Path, port: int | None) -> AsyncIterator[Shop]:
    """The shop with 5 of sku-0001, orders calling payments through its own static sidecar,
    whose payments cluster is 127.0.0.1:``port`` (None: no endpoint)."""
    async with (
        running_shop(tmp_path, stock={"sku-0001": 5}, with_orders=False) as shop,
        static_envoy(
            tmp_path,
            "orders-sidecar",
            [Route("/grpcmesh.shop.v1.PaymentService/", "payments")],
            [cluster("payments", port)],
        ) as sidecar,
    ):
        await shop.start_orders(targets={**shop.targets, "payments": sidecar})
        yield shop


@contextmanager
def runner_warnings() -> Iterator[list[str]]:
    """The saga runner's warnings, as they are logged."""
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("grpcmesh_orders.runner")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


@asynccontextmanager
async def forwarding(listener: socket.socket, target: str) -> AsyncIterator[None]:
    """Listen on ``listener`` and relay every connection to ``target`` (host:port)."""
    host, _, port = target.rpartition(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(relay, sock=listener)
    try:
        yield
    finally:
        server.close()
