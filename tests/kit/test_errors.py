"""Errors become the right gRPC statuses, and nothing internal leaks to the caller."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc
from grpcmesh_kit import ServiceApp
from tests.kit.echo_service import EchoCatalog, EchoSettings


async def call(channel: grpc.aio.Channel, product_id: str) -> grpc.aio.AioRpcError:
    stub = catalog_pb2_grpc.CatalogServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetProduct(catalog_pb2.GetProductRequest(product_id=product_id), timeout=5)
    return caught.value


async def test_invalid_argument_names_the_field_in_message_and_details(
    echo_channel: grpc.aio.Channel,
) -> None:
    error = await call(echo_channel, "")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "product_id: must not be empty"
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("product_id", "must not be empty")
    ]


async def test_not_found(echo_channel: grpc.aio.Channel) -> None:
    error = await call(echo_channel, "missing")
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_unexpected_exception_is_internal_without_detail(
    echo_channel: grpc.aio.Channel,
) -> None:
    error = await call(echo_channel, "crash")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert "secret" not in (error.debug_error_string() or "")


async def test_oversized_message_is_resource_exhausted(echo_channel: grpc.aio.Channel) -> None:
    error = await call(echo_channel, "x" * (4 * 1024 * 1024 + 1))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_errors_still_echo_the_request_id(echo_channel: grpc.aio.Channel) -> None:
    stub = catalog_pb2_grpc.CatalogServiceStub(echo_channel)
    for product_id in ("", "crash"):
        call = stub.GetProduct(
            catalog_pb2.GetProductRequest(product_id=product_id),
            metadata=(("x-request-id", f"req-{product_id}"),),
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        trailers = dict(await call.trailing_metadata() or ())
        assert trailers["x-request-id"] == f"req-{product_id}"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff\xff\xff", "grpcmesh.shop.v1.GetProductRequest"),
        # field 1 (product_id), length 2, bytes that are not UTF-8
        (b"\x0a\x02\xc3\x28", "UTF-8"),
    ],
    ids=["corrupt-wire-format", "invalid-utf8"],
)
async def test_a_request_that_does_not_decode_is_invalid_argument(
    echo_channel: grpc.aio.Channel, raw: bytes, why: str
) -> None:
    # Raw bytes on the wire: what a broken or hostile client sends, past any stub.
    send: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = echo_channel.unary_unary(
        "/grpcmesh.shop.v1.CatalogService/GetProduct"
    )
    call = send(raw, timeout=5, metadata=(("x-request-id", "req-bad-bytes"),))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith("request: is not a valid ") and why in details
    assert "Error" not in details and "class" not in details  # no Python exception leaks
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "request"
    assert dict(await call.trailing_metadata() or ())["x-request-id"] == "req-bad-bytes"


async def test_a_malformed_request_is_counted_as_invalid_argument(
    echo: tuple[ServiceApp[EchoSettings], EchoCatalog], echo_channel: grpc.aio.Channel
) -> None:
    send: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = echo_channel.unary_unary(
        "/grpcmesh.shop.v1.CatalogService/GetProduct"
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await send(b"\xff\xff\xff", timeout=5)
    handled = echo[0].metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "grpcmesh.shop.v1.CatalogService",
            "grpc_method": "GetProduct",
            "grpc_code": "InvalidArgument",
        },
    )
    assert handled == 1
