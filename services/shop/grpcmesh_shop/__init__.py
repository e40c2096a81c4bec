"""Rules the reference shop services share: the field constraints protos/grpcmesh/shop/v1
documents (ids, line items, currency codes), checked one way in every service."""

from grpcmesh_shop.rules import (
    MAX_ID_LENGTH,
    MAX_ITEMS,
    MAX_QUANTITY,
    CheckedItem,
    LineItemLike,
    require_id,
    validate_currency,
    validate_line_items,
)

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_ITEMS",
    "MAX_QUANTITY",
    "CheckedItem",
    "LineItemLike",
    "require_id",
    "validate_currency",
    "validate_line_items",
]
