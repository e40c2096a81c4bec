"""Request validation and page tokens for OrderService. Pure: no I/O.

Validation runs before anything is written, so an invalid request leaves no trace. Errors name
the offending field as a dotted path (``items[0].quantity``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from grpcmesh_kit.errors import InvalidArgument
from grpcmesh_orders.events import LineItem

MAX_KEY_LENGTH = 128
MAX_ID_LENGTH = 128
MAX_ITEMS = 100
MAX_QUANTITY = 1000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_CURRENCY = re.compile(r"[A-Z]{3}")
_TOKEN_VERSION = 1


class LineItemLike(Protocol):
    """What validation reads from a request item (a proto LineItem fits)."""

    @property
    def product_id(self) -> str: ...

    @property
    def quantity(self) -> int: ...


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


def _require_id(value: str, field: str, max_length: int = MAX_ID_LENGTH) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    return value


def validate_place_order(
    idempotency_key: str,
    customer_id: str,
    items: Sequence[LineItemLike],
    currency_code: str,
) -> PlaceOrderCommand:
    _require_id(idempotency_key, "idempotency_key", MAX_KEY_LENGTH)
    _require_id(customer_id, "customer_id")
    if not 1 <= len(items) <= MAX_ITEMS:
        raise InvalidArgument("items", f"must have between 1 and {MAX_ITEMS} items")
    first_index: dict[str, int] = {}
    checked: list[LineItem] = []
    for index, item in enumerate(items):
        product_id = _require_id(item.product_id, f"items[{index}].product_id")
        if product_id in first_index:
            raise InvalidArgument(
                f"items[{index}].product_id",
                f"duplicates items[{first_index[product_id]}] ({product_id!r})",
            )
        first_index[product_id] = index
        if not 1 <= item.quantity <= MAX_QUANTITY:
            raise InvalidArgument(
                f"items[{index}].quantity", f"must be between 1 and {MAX_QUANTITY}"
            )
        checked.append(LineItem(product_id, item.quantity))
    if not _CURRENCY.fullmatch(currency_code):
        raise InvalidArgument("currency_code", "must be three upper-case letters (ISO 4217)")
    return PlaceOrderCommand(idempotency_key, customer_id, tuple(checked), currency_code)


def validate_order_id(order_id: str) -> str:
    return _require_id(order_id, "order_id")


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


def validate_list_orders(customer_id: str, page_size: int, page_token: str) -> ListQuery:
    if len(customer_id) > MAX_ID_LENGTH:
        raise InvalidArgument("customer_id", f"must be at most {MAX_ID_LENGTH} characters")
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    before = decode_page_token(page_token, customer_id) if page_token else None
    return ListQuery(customer_id, before, page_size or DEFAULT_PAGE_SIZE)


def encode_page_token(before: int, customer_id: str) -> str:
    # The filter is part of the token so a token cannot be replayed against another filter.
    raw = json.dumps({"v": _TOKEN_VERSION, "before": before, "customer_id": customer_id})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, customer_id: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument("page_token", "is not a token this server issued") from None
    if (
        not isinstance(data, dict)
        or data.get("v") != _TOKEN_VERSION
        or type(data.get("before")) is not int
        or data["before"] < 1
        or not isinstance(data.get("customer_id"), str)
    ):
        raise InvalidArgument("page_token", "is not a token this server issued")
    if data["customer_id"] != customer_id:
        raise InvalidArgument("page_token", "was issued for a different customer_id")
    before: int = data["before"]
    return before
