"""Errors become the right gRPC statuses, and nothing internal leaks to the caller."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc


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
