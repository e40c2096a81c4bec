"""Request validation and page tokens for OrderService. Pure: no I/O.

Validation runs before anything is written, so an invalid request leaves no trace. Errors name
the offending field as a dotted path (``items[0].quantity``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from grpcmesh_kit.errors import InvalidArgument
from grpcmesh_kit.pagetokens import PageTokens
from grpcmesh_orders.events import LineItem
from grpcmesh_shop import (
    MAX_ID_LENGTH,
    LineItemLike,
    require_id,
    validate_currency,
    validate_line_items,
)

MAX_KEY_LENGTH = MAX_ID_LENGTH
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_TOKEN_VERSION = 1
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class PlaceOrderCommand:
    idempotency_key: str
    customer_id: str
    items: tuple[LineItem, ...]
    currency_code: str

    @property
    def fingerprint(self) -> str:
        """Identifies the request's content, so a key reused for a different order is caught.

        Items are sorted: a retry that lists the same items in another order is the same order.
        """
        canonical = json.dumps(
            {
                "customer_id": self.customer_id,
                "currency_code": self.currency_code,
                "items": sorted((i.product_id, i.quantity) for i in self.items),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def validate_place_order(
    idempotency_key: str,
    customer_id: str,
    items: Sequence[LineItemLike],
    currency_code: str,
) -> PlaceOrderCommand:
    require_id(idempotency_key, "idempotency_key", MAX_KEY_LENGTH)
    require_id(customer_id, "customer_id")
    checked = tuple(LineItem(*item) for item in validate_line_items(items))
    validate_currency(currency_code)
    return PlaceOrderCommand(idempotency_key, customer_id, checked, currency_code)


def validate_order_id(order_id: str) -> str:
    return require_id(order_id, "order_id")


def validate_after_sequence(after_sequence: int) -> int:
    if after_sequence < 0:
        raise InvalidArgument("after_sequence", "must not be negative")
    return after_sequence


@dataclass(frozen=True)
class ListQuery:
    """Orders of ``customer_id`` ("" for all) older than ``before`` (a projection position)."""

    customer_id: str
    before: int | None
    limit: int


def validate_list_orders(
    customer_id: str, page_size: int, page_token: str, tokens: PageTokens
) -> ListQuery:
    if len(customer_id) > MAX_ID_LENGTH:
        raise InvalidArgument("customer_id", f"must be at most {MAX_ID_LENGTH} characters")
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    before = decode_page_token(tokens, page_token, customer_id) if page_token else None
    return ListQuery(customer_id, before, page_size or DEFAULT_PAGE_SIZE)


def encode_page_token(tokens: PageTokens, before: int, customer_id: str) -> str:
    # The filter is part of the token so a token cannot be replayed against another filter.
    return tokens.encode({"v": _TOKEN_VERSION, "before": before, "customer_id": customer_id})


def decode_page_token(tokens: PageTokens, token: str, customer_id: str) -> int:
    data = tokens.decode(token)  # signed: only this service's tokens get past here
    before = data.get("before")
    if (
        data.get("v") != _TOKEN_VERSION
        or type(before) is not int
        or not 1 <= before <= INT64_MAX  # a position is a SQLite rowid
        or not isinstance(data.get("customer_id"), str)
    ):
        raise InvalidArgument("page_token", "is not a token this server issued")
    if data["customer_id"] != customer_id:
        raise InvalidArgument("page_token", "was issued for a different customer_id")
    return before
