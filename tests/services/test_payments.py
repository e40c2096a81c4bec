"""Payments over real gRPC: idempotent charges and refunds, failure injection, live config."""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from grpcmesh.shop.v1 import common_pb2, payments_pb2, payments_pb2_grpc
from grpcmesh_kit import ServiceApp
from grpcmesh_payments.main import build_app
from grpcmesh_payments.settings import PaymentsSettings
from tests.services.processes import service_process

if TYPE_CHECKING:
    # Exists only in the generated stubs, for typing async stubs.
    from grpcmesh.shop.v1.payments_pb2_grpc import PaymentServiceAsyncStub as Stub

CAPTURED = payments_pb2.PAYMENT_STATE_CAPTURED
DECLINED = payments_pb2.PAYMENT_STATE_DECLINED
REFUNDED = payments_pb2.PAYMENT_STATE_REFUNDED
DECLINED_ID = re.compile(r"payment (pay_[0-9a-f]+) declined")


class ScriptedRandom(random.Random):
    """Returns the given rolls in order, so a test decides which charges fail."""

    def __init__(self, rolls: list[float]) -> None:
        super().__init__(0)
        self._rolls = list(rolls)

    def random(self) -> float:
        return self._rolls.pop(0)


def base_settings(tmp_path: Path) -> dict[str, Any]:
    return {
        "db_path": str(tmp_path / "payments.db"),
        "port": 0,
        "metrics_port": 0,
        "drain_seconds": 0,
        "grace_seconds": 1,
    }


@asynccontextmanager
async def serve(
    settings: PaymentsSettings, rng: random.Random | None = None
) -> AsyncIterator[tuple[ServiceApp[PaymentsSettings], Stub]]:
    app = build_app(settings, rng=rng)
    async with app.running(), grpc.aio.insecure_channel(app.address) as channel:
        yield app, payments_pb2_grpc.PaymentServiceStub(channel)


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    async with serve(PaymentsSettings(**base_settings(tmp_path))) as (_, s):
        yield s


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


def charge(key: str, amount_minor: int = 1999, order_id: str = "o-1") -> payments_pb2.ChargeRequest:
    return payments_pb2.ChargeRequest(
        idempotency_key=key,
        order_id=order_id,
        customer_id="c-1",
        amount=common_pb2.Money(currency_code="USD", amount_minor=amount_minor),
    )


def declined_payment_id(error: grpc.aio.AioRpcError) -> str:
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    match = DECLINED_ID.search(error.details() or "")
    assert match, error.details()
    return match.group(1)


def db_rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Reads the service's database directly, to count what was recorded."""
    conn = sqlite3.connect(tmp_path / "payments.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Awaits ``condition`` until true; fails after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def test_charge_captures_and_get_payment_returns_it(stub: Stub) -> None:
    payment = (await stub.Charge(charge("k-1"))).payment
    assert payment.state == CAPTURED
    assert payment.payment_id.startswith("pay_")
    assert (payment.order_id, payment.customer_id) == ("o-1", "c-1")
    assert (payment.amount.currency_code, payment.amount.amount_minor) == ("USD", 1999)
    assert payment.decline_reason == ""

    fetched = await stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment.payment_id))
    assert fetched.payment == payment


async def test_repeated_charges_return_the_first_payment_and_capture_once(
    tmp_path: Path, stub: Stub
) -> None:
    first = (await stub.Charge(charge("k-1"))).payment
    again = (await stub.Charge(charge("k-1"))).payment
    assert again == first

    # Concurrent duplicates (e.g. a client and the mesh both retrying) still capture once.
    responses = await asyncio.gather(*(stub.Charge(charge("k-2")) for _ in range(20)))
    assert len({r.payment.payment_id for r in responses}) == 1
    assert db_rows(tmp_path, "SELECT idempotency_key, count(*) FROM payments GROUP BY 1") == [
        ("k-1", 1),
        ("k-2", 1),
    ]


@pytest.mark.parametrize(
    "reused", [charge("k-1", amount_minor=2000), charge("k-1", order_id="o-2")]
)
async def test_key_reuse_with_different_parameters_is_invalid(
    tmp_path: Path, stub: Stub, reused: payments_pb2.ChargeRequest
) -> None:
    await stub.Charge(charge("k-1"))
    error = await rpc_error(stub.Charge(reused))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("idempotency_key:")
    assert db_rows(tmp_path, "SELECT count(*) FROM payments") == [(1,)]


def _without_amount() -> payments_pb2.ChargeRequest:
    request = charge("k-1")
    request.ClearField("amount")
    return request


def _with_amount(currency_code: str, amount_minor: int) -> payments_pb2.ChargeRequest:
    request = charge("k-1")
    request.amount.CopyFrom(
        common_pb2.Money(currency_code=currency_code, amount_minor=amount_minor)
    )
    return request


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (charge(""), "idempotency_key"),
        (charge("k" * 129), "idempotency_key"),
        (charge("k-1", order_id=""), "order_id"),
        (_without_amount(), "amount"),
        (_with_amount("usd", 100), "amount.currency_code"),
        (_with_amount("US", 100), "amount.currency_code"),
        (_with_amount("USD", 0), "amount.amount_minor"),
        (_with_amount("USD", -1), "amount.amount_minor"),
    ],
)
async def test_invalid_charge_names_the_field_and_records_nothing(
    tmp_path: Path, stub: Stub, request_: payments_pb2.ChargeRequest, field: str
) -> None:
    error = await rpc_error(stub.Charge(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}:")
    assert db_rows(tmp_path, "SELECT count(*) FROM payments") == [(0,)]


async def test_declines_are_recorded_and_replayed(tmp_path: Path) -> None:
    settings = PaymentsSettings(**base_settings(tmp_path), failure_rate=1.0)
    async with serve(settings) as (_, stub):
        payment_id = declined_payment_id(await rpc_error(stub.Charge(charge("k-1"))))
        assert declined_payment_id(await rpc_error(stub.Charge(charge("k-1")))) == payment_id

        fetched = (
            await stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment_id))
        ).payment
        assert fetched.state == DECLINED
        assert fetched.decline_reason
    assert db_rows(tmp_path, "SELECT payment_id, state FROM payments") == [(payment_id, "DECLINED")]


async def test_unavailable_failures_are_not_recorded_so_a_retry_can_succeed(
    tmp_path: Path,
) -> None:
    settings = PaymentsSettings(
        **base_settings(tmp_path), failure_rate=0.5, failure_code="UNAVAILABLE"
    )
    async with serve(settings, rng=ScriptedRandom([0.1, 0.9])) as (_, stub):
        error = await rpc_error(stub.Charge(charge("k-1")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert db_rows(tmp_path, "SELECT count(*) FROM payments") == [(0,)]

        payment = (await stub.Charge(charge("k-1"))).payment
        assert payment.state == CAPTURED
    assert db_rows(tmp_path, "SELECT count(*) FROM payments") == [(1,)]


async def test_random_seed_makes_injected_failures_reproducible(tmp_path: Path) -> None:
    async def outcomes(run: str) -> list[bool]:
        (tmp_path / run).mkdir()
        settings = PaymentsSettings(
            **base_settings(tmp_path / run), failure_rate=0.5, random_seed=7
        )
        results = []
        async with serve(settings) as (_, stub):
            for n in range(20):
                try:
                    await stub.Charge(charge(f"k-{n}"))
                    results.append(True)
                except grpc.aio.AioRpcError as error:
                    declined_payment_id(error)
                    results.append(False)
        return results

    first = await outcomes("a")
    assert first == await outcomes("b")
    assert True in first
    assert False in first


async def test_latency_ms_delays_charges(tmp_path: Path) -> None:
    settings = PaymentsSettings(**base_settings(tmp_path), latency_ms=100)
    async with serve(settings) as (_, stub):
        loop = asyncio.get_running_loop()
        started = loop.time()
        await stub.Charge(charge("k-1"))
        assert loop.time() - started >= 0.1


async def test_refund_is_idempotent_and_moves_money_once(tmp_path: Path, stub: Stub) -> None:
    payment = (await stub.Charge(charge("k-1"))).payment
    refund = payments_pb2.RefundRequest(idempotency_key="r-1", payment_id=payment.payment_id)
    refunded = (await stub.Refund(refund)).payment
    assert (refunded.payment_id, refunded.state) == (payment.payment_id, REFUNDED)
    assert (await stub.Refund(refund)).payment == refunded

    # A second refund (another key) of a refunded payment returns it unchanged.
    other = payments_pb2.RefundRequest(idempotency_key="r-2", payment_id=payment.payment_id)
    assert (await stub.Refund(other)).payment == refunded

    # Repeating the original charge reports the payment as it now is; no new capture.
    replay = (await stub.Charge(charge("k-1"))).payment
    assert (replay.payment_id, replay.state) == (payment.payment_id, REFUNDED)
    assert db_rows(tmp_path, "SELECT state FROM payments") == [("REFUNDED",)]


async def test_refund_refusals(tmp_path: Path) -> None:
    settings = PaymentsSettings(**base_settings(tmp_path), failure_rate=0.5)
    async with serve(settings, rng=ScriptedRandom([0.9, 0.9, 0.1])) as (_, stub):
        captured = (await stub.Charge(charge("k-1"))).payment
        other = (await stub.Charge(charge("k-2", order_id="o-2"))).payment
        declined_id = declined_payment_id(await rpc_error(stub.Charge(charge("k-3"))))

        unknown = await rpc_error(
            stub.Refund(payments_pb2.RefundRequest(idempotency_key="r-0", payment_id="pay_nope"))
        )
        assert unknown.code() == grpc.StatusCode.NOT_FOUND

        declined = await rpc_error(
            stub.Refund(payments_pb2.RefundRequest(idempotency_key="r-1", payment_id=declined_id))
        )
        assert declined.code() == grpc.StatusCode.FAILED_PRECONDITION

        await stub.Refund(
            payments_pb2.RefundRequest(idempotency_key="r-2", payment_id=captured.payment_id)
        )
        reused = await rpc_error(
            stub.Refund(
                payments_pb2.RefundRequest(idempotency_key="r-2", payment_id=other.payment_id)
            )
        )
        assert reused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (reused.details() or "").startswith("idempotency_key:")
        still = await stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=other.payment_id))
        assert still.payment.state == CAPTURED

        for request_, field in [
            (payments_pb2.RefundRequest(payment_id=captured.payment_id), "idempotency_key"),
            (payments_pb2.RefundRequest(idempotency_key="r-9"), "payment_id"),
        ]:
            error = await rpc_error(stub.Refund(request_))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (error.details() or "").startswith(f"{field}:")


async def test_get_payment_errors(stub: Stub) -> None:
    error = await rpc_error(stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id="pay_x")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await rpc_error(stub.GetPayment(payments_pb2.GetPaymentRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("payment_id:")


def write_config(path: Path, text: str) -> None:
    # Replace atomically, as a ConfigMap update does, so the watcher never sees half a file.
    staging = path.with_suffix(".tmp")
    staging.write_text(text)
    staging.replace(path)


async def test_failure_rate_follows_the_config_file_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "payments.yaml"
    write_config(config, "failure_rate: 0.0\n")
    monkeypatch.setenv("GRPCMESH_CONFIG_FILE", str(config))
    settings = PaymentsSettings.load(**base_settings(tmp_path), config_poll_seconds=0.02)
    assert settings.config_file == config

    async with serve(settings) as (app, stub):
        for n in range(3):
            assert (await stub.Charge(charge(f"ok-{n}"))).payment.state == CAPTURED

        write_config(config, "failure_rate: 1.0\n")
        probes = 0
        declined: dict[str, str] = {}  # idempotency key -> declined payment id

        async def probe() -> bool:
            """Charges a fresh key; True when it was captured."""
            nonlocal probes
            probes += 1
            key = f"probe-{probes}"
            try:
                await stub.Charge(charge(key))
            except grpc.aio.AioRpcError as error:
                declined[key] = declined_payment_id(error)
                return False
            return True

        async def declines() -> bool:
            return not await probe()

        await poll(declines)
        assert app.settings.failure_rate == 1.0
        # Keys charged before the change keep their first outcome.
        assert (await stub.Charge(charge("ok-0"))).payment.state == CAPTURED

        write_config(config, "failure_rate: 0.0\n")
        await poll(probe)
        assert app.settings.failure_rate == 0.0
        # ...and a recorded decline stays that decline once failures are switched off.
        key, payment_id = next(iter(declined.items()))
        assert declined_payment_id(await rpc_error(stub.Charge(charge(key)))) == payment_id


@pytest.mark.slow
async def test_python_m_payments_serves_until_sigterm(tmp_path: Path) -> None:
    """`python -m grpcmesh_payments` configures itself from the environment, serves, and exits
    cleanly on SIGTERM."""
    env = {"GRPCMESH_DB_PATH": str(tmp_path / "payments.db"), "GRPCMESH_FAILURE_RATE": "1.0"}
    async with service_process("grpcmesh_payments", tmp_path, env) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        declined_payment_id(await rpc_error(stub.Charge(charge("k-1"))))
