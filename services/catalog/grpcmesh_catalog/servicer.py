"""CatalogService over gRPC: validate, consult the cache, else read the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2
from grpcmesh_catalog import domain, storage
from grpcmesh_catalog.cache import Clock, TtlCache
from grpcmesh_catalog.domain import Page, Product
from grpcmesh_catalog.settings import CatalogSettings
from grpcmesh_kit import NotFound, Store

Context = grpc.aio.ServicerContext[Any, Any]


def product_to_proto(product: Product) -> catalog_pb2.Product:
    return catalog_pb2.Product(
        product_id=product.product_id,
        name=product.name,
        description=product.description,
        price=common_pb2.Money(
            currency_code=product.currency_code, amount_minor=product.price_minor
        ),
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(
        self,
        store: Store,
        settings: Callable[[], CatalogSettings],
        clock: Clock = time.monotonic,
    ) -> None:
        self._store = store
        # A callable, not a value: settings are re-read from the config file at run time.
        self._settings = settings
        max_entries = settings().cache_max_entries
        self._products: TtlCache[str, Product] = TtlCache(max_entries, clock)
        self._pages: TtlCache[domain.PageRequest, Page] = TtlCache(max_entries, clock)

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Context
    ) -> catalog_pb2.ListProductsResponse:
        page_request = domain.validate_list(request.page_size, request.page_token)
        page = self._pages.get(page_request)
        if page is None:
            # One extra row tells whether another page follows.
            rows = await self._store.run(
                lambda conn: storage.list_products(conn, page_request.after, page_request.limit + 1)
            )
            page = domain.make_page(rows, page_request.limit)
            self._pages.put(page_request, page, self._settings().cache_ttl_seconds)
        return catalog_pb2.ListProductsResponse(
            products=[product_to_proto(p) for p in page.products],
            next_page_token=page.next_page_token,
        )

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: Context
    ) -> catalog_pb2.GetProductResponse:
        product_id = domain.validate_product_id(request.product_id)
        product = self._products.get(product_id)
        if product is None:
            product = await self._store.run(lambda conn: storage.get_product(conn, product_id))
            if product is None:
                raise NotFound(f"product {product_id!r} not found")
            self._products.put(product_id, product, self._settings().cache_ttl_seconds)
        return catalog_pb2.GetProductResponse(product=product_to_proto(product))
