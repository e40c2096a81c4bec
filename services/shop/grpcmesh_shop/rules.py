"""Field rules from the shop API's proto comments. Pure; errors name the field."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from grpcmesh_kit import InvalidArgument

MAX_ID_LENGTH = 128
"""Ids and idempotency keys: "Required, at most 128 characters"."""
MAX_ITEMS = 100
MAX_QUANTITY = 1000
_CURRENCY = re.compile(r"[A-Z]{3}")


class LineItemLike(Protocol):
    """What validation reads from a request item (a proto LineItem fits)."""

    @property
    def product_id(self) -> str: ...

    @property
    def quantity(self) -> int: ...


class CheckedItem(NamedTuple):
    product_id: str
    quantity: int


def require_id(value: str, field: str, max_length: int = MAX_ID_LENGTH) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    return value


def validate_currency(code: str, field: str = "currency_code") -> str:
    if not _CURRENCY.fullmatch(code):
        raise InvalidArgument(field, "must be three upper-case letters (ISO 4217)")
    return code


def validate_line_items(
    items: Sequence[LineItemLike], field: str = "items"
) -> tuple[CheckedItem, ...]:
    """1 to MAX_ITEMS items, each product once, quantities 1 to MAX_QUANTITY; request order."""
    if not 1 <= len(items) <= MAX_ITEMS:
        raise InvalidArgument(field, f"must have between 1 and {MAX_ITEMS} items")
    first_index: dict[str, int] = {}
    checked: list[CheckedItem] = []
    for index, item in enumerate(items):
        product_id = require_id(item.product_id, f"{field}[{index}].product_id")
        if product_id in first_index:
            raise InvalidArgument(
                f"{field}[{index}].product_id",
                f"duplicates {field}[{first_index[product_id]}] ({product_id!r})",
            )
        first_index[product_id] = index
        if not 1 <= item.quantity <= MAX_QUANTITY:
            raise InvalidArgument(
                f"{field}[{index}].quantity", f"must be between 1 and {MAX_QUANTITY}"
            )
        checked.append(CheckedItem(product_id, item.quantity))
    return tuple(checked)
