"""InventoryService over gRPC: validate, run one store transaction, map to protos."""

from __future__ import annotations

from typing import Any

import grpc

from grpcmesh.shop.v1 import inventory_pb2, inventory_pb2_grpc
from grpcmesh_inventory import domain, storage
from grpcmesh_inventory.domain import ReservationState, StockLevel
from grpcmesh_kit import NotFound, Store

Context = grpc.aio.ServicerContext[Any, Any]

_STATES: dict[ReservationState, inventory_pb2.ReservationState.ValueType] = {
    ReservationState.RESERVED: inventory_pb2.RESERVATION_STATE_RESERVED,
    ReservationState.RELEASED: inventory_pb2.RESERVATION_STATE_RELEASED,
    ReservationState.COMMITTED: inventory_pb2.RESERVATION_STATE_COMMITTED,
}


def stock_to_proto(level: StockLevel) -> inventory_pb2.StockLevel:
    return inventory_pb2.StockLevel(
        product_id=level.product_id,
        available=level.available,
        reserved=level.reserved,
        committed=level.committed,
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: Store) -> None:
        self._store = store

    async def GetStock(
        self, request: inventory_pb2.GetStockRequest, context: Context
    ) -> inventory_pb2.GetStockResponse:
        product_id = domain.validate_product_id(request.product_id)
        level = await self._store.run(lambda conn: storage.get_stock(conn, product_id))
        if level is None:
            raise NotFound(f"no stock recorded for product {product_id!r}")
        return inventory_pb2.GetStockResponse(stock=stock_to_proto(level))

    async def ReserveStock(
        self, request: inventory_pb2.ReserveStockRequest, context: Context
    ) -> inventory_pb2.ReserveStockResponse:
        # Validation happens before the store is touched, so a bad request writes nothing.
        command = domain.validate_reserve(request.order_id, request.items)
        state = await self._store.run(lambda conn: storage.reserve(conn, command))
        return inventory_pb2.ReserveStockResponse(order_id=command.order_id, state=_STATES[state])

    async def ReleaseStock(
        self, request: inventory_pb2.ReleaseStockRequest, context: Context
    ) -> inventory_pb2.ReleaseStockResponse:
        order_id = domain.validate_order_id(request.order_id)
        state = await self._store.run(lambda conn: storage.release(conn, order_id))
        return inventory_pb2.ReleaseStockResponse(order_id=order_id, state=_STATES[state])

    async def CommitStock(
        self, request: inventory_pb2.CommitStockRequest, context: Context
    ) -> inventory_pb2.CommitStockResponse:
        order_id = domain.validate_order_id(request.order_id)
        state = await self._store.run(lambda conn: storage.commit(conn, order_id))
        return inventory_pb2.CommitStockResponse(order_id=order_id, state=_STATES[state])

    async def AdjustStock(
        self, request: inventory_pb2.AdjustStockRequest, context: Context
    ) -> inventory_pb2.AdjustStockResponse:
        command = domain.validate_adjust(request.product_id, request.delta)
        level = await self._store.run(lambda conn: storage.adjust(conn, command))
        return inventory_pb2.AdjustStockResponse(stock=stock_to_proto(level))
