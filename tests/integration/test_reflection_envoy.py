"""Server reflection through the ingress: ``list``, ``describe`` and a call by name work for
exactly the exposed services, the way grpcurl and Postman use them.

The reference mesh (catalog and orders exposed, inventory and payments not) on the real local
control plane, with a real ingress Envoy. The catalog "app" is an in-process server that
answers GetProduct; reflection is answered by the control plane (``host.reflection``), reached
through the ingress's route to its xDS cluster.

Clients: grpcio-reflection's ``ProtoReflectionDescriptorDatabase`` (v1alpha, as older tools
ask), a hand-made v1 stream (grpcurl asks v1 first), and grpc-js with
grpc-js-reflection-client (``tests/js``, installed by ``make test-tools``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from grpcmesh.shop.v1 import catalog_pb2
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from tests.integration.rig import SERVING_TIMEOUT, has_healthy_host
from tests.integration.test_control_plane_envoy import (
    EXAMPLES,
    Envoy,
    in_process_control_plane,
    poll,
    running_envoy,
    write_endpoints,
)
from tests.loopback import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
JS = REPO / "tests" / "js"
CATALOG = "grpcmesh.shop.v1.CatalogService"
ORDERS = "grpcmesh.shop.v1.OrderService"
INVENTORY = "grpcmesh.shop.v1.InventoryService"


@dataclass
class Gateway:
    envoy: Envoy
    address: str


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async def get_product(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        asked = catalog_pb2.GetProductRequest.FromString(request)
        product = catalog_pb2.Product(product_id=asked.product_id, name=f"the {asked.product_id}")
        return catalog_pb2.GetProductResponse(product=product).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                CATALOG, {"GetProduct": grpc.unary_unary_rpc_method_handler(get_product)}
            )
        ]
    )
    app_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    run = tmp_path / "run"
    shutil.copytree(EXAMPLES, run / "resources")
    write_endpoints(run, ("catalog", app_port, True))
    node = ProxyNode(NodeId.ingress(), ingress_port=free_port(), bind_address="127.0.0.1")
    try:
        async with (
            in_process_control_plane(run, mtls=False) as served,
            running_envoy(tmp_path, served.xds, node=node) as envoy,
        ):
            await poll(
                lambda: has_healthy_host(envoy, "catalog|v1", "ingress"),
                "catalog's endpoint at the ingress",
                SERVING_TIMEOUT,
            )
            yield Gateway(envoy, f"127.0.0.1:{node.ingress_port}")
    finally:
        await server.stop(grace=None)


@pytest.fixture
def channel(gateway: Gateway) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as channel:
        yield channel


def _list_describe_call(channel: grpc.Channel) -> dict[str, Any]:
    """What grpcurl does: list, describe, then a call built from the descriptors alone."""
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    listed = sorted(database.get_services())
    method = pool.FindServiceByName(CATALOG).FindMethodByName("GetProduct")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{CATALOG}/GetProduct",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    response = call(request_class(product_id="sku-1"), timeout=5)
    try:
        pool.FindServiceByName(INVENTORY)
        inventory_found = True
    except KeyError:
        inventory_found = False
    return {
        "listed": listed,
        "methods": sorted(m.name for m in pool.FindServiceByName(CATALOG).methods),
        "idempotency": method.GetOptions().idempotency_level,
        "order_methods": sorted(m.name for m in pool.FindServiceByName(ORDERS).methods),
        "name": response.product.name,  # type: ignore[attr-defined]
        "inventory_found": inventory_found,
    }


async def test_grpcio_reflection_lists_describes_and_calls_the_exposed_services(
    channel: grpc.Channel,
) -> None:
    seen = await asyncio.to_thread(_list_describe_call, channel)
    assert seen == {
        "listed": [CATALOG, ORDERS],
        "methods": ["GetProduct", "ListProducts"],
        "idempotency": descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        "order_methods": ["GetOrder", "ListOrders", "PlaceOrder", "WatchOrder"],
        "name": "the sku-1",
        "inventory_found": False,
    }


def _v1_stream(
    channel: grpc.Channel, requests: list[reflection_pb2.ServerReflectionRequest]
) -> list[reflection_pb2.ServerReflectionResponse]:
    # grpc.reflection.v1 has v1alpha's messages under another package: same bytes on the wire.
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(info(iter(requests), timeout=5))


async def test_v1_reflection_hides_unexposed_services(channel: grpc.Channel) -> None:
    listed, inventory, orders_file = await asyncio.to_thread(
        _v1_stream,
        channel,
        [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=INVENTORY),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=ORDERS),
        ],
    )
    assert [s.name for s in listed.list_services_response.service] == [CATALOG, ORDERS]
    assert inventory.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in orders_file.file_descriptor_response.file_descriptor_proto
    ]
    assert [s.name for f in files for s in f.service] == ["OrderService"]


async def test_grpc_js_lists_describes_and_calls_through_the_ingress(gateway: Gateway) -> None:
    node = shutil.which("node")
    assert node, "node is missing: `make sysdeps` installs it"
    assert (JS / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "tests/js/node_modules is missing: run `make test-tools`"
    )
    request = json.dumps({"product_id": "sku-2"})
    process = await asyncio.create_subprocess_exec(
        node, str(JS / "reflect.js"), gateway.address, CATALOG, "GetProduct", request,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    seen = json.loads(out)
    assert seen == {
        "services": [CATALOG, ORDERS],
        "methods": ["GetProduct", "ListProducts"],
        "response": {"product": {"product_id": "sku-2", "name": "the sku-2"}},
    }
