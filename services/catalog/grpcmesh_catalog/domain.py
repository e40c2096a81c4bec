"""Catalog rules: request validation, paging and the product value type. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from grpcmesh_kit import InvalidArgument
from grpcmesh_shop import require_id

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

# Versioned so the token format can change later without misreading old tokens.
_TOKEN_VERSION = 1


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    description: str
    currency_code: str
    price_minor: int


@dataclass(frozen=True)
class PageRequest:
    """A validated ListProducts request: products with id > ``after``, at most ``limit``."""

    after: str
    limit: int


@dataclass(frozen=True)
class Page:
    products: tuple[Product, ...]
    next_page_token: str


def validate_page_size(page_size: int) -> int:
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    return page_size or DEFAULT_PAGE_SIZE


def encode_page_token(after: str) -> str:
    raw = json.dumps({"v": _TOKEN_VERSION, "after": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """Returns the product id the page starts after; "" for the first page."""
    if not token:
        return ""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument("page_token", "is not a token this server issued") from None
    if (
        not isinstance(data, dict)
        or data.get("v") != _TOKEN_VERSION
        or not isinstance(data.get("after"), str)
        or not data["after"]
    ):
        raise InvalidArgument("page_token", "is not a token this server issued")
    after: str = data["after"]
    return after


def validate_list(page_size: int, page_token: str) -> PageRequest:
    return PageRequest(after=decode_page_token(page_token), limit=validate_page_size(page_size))


def make_page(rows: list[Product], limit: int) -> Page:
    """Builds a page from up to ``limit + 1`` rows; the extra row only signals a next page."""
    products = tuple(rows[:limit])
    more = len(rows) > limit
    token = encode_page_token(products[-1].product_id) if more and products else ""
    return Page(products=products, next_page_token=token)


def validate_product_id(product_id: str) -> str:
    return require_id(product_id, "product_id")
