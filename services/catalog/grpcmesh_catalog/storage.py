"""Catalog schema (migrations for the kit Store) and its queries."""

from __future__ import annotations

import sqlite3

from grpcmesh_catalog.domain import Product

# The kit splits migration scripts on ";", so seed strings must not contain one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE products (
        product_id    TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        description   TEXT NOT NULL,
        currency_code TEXT NOT NULL CHECK (length(currency_code) = 3),
        price_minor   INTEGER NOT NULL CHECK (price_minor >= 0)
    ) WITHOUT ROWID
    """,
    """
    INSERT INTO products (product_id, name, description, currency_code, price_minor) VALUES
        ('sku-0001', 'Espresso Beans 1kg', 'Dark roast whole beans for espresso', 'USD', 2499),
        ('sku-0002', 'Gooseneck Kettle', 'Temperature-controlled pour-over kettle', 'USD', 5900),
        ('sku-0003', 'Ceramic Mug', 'Stoneware mug, 350 ml', 'USD', 1450),
        ('sku-0004', 'Burr Grinder', 'Conical burr grinder with 40 settings', 'USD', 12900),
        ('sku-0005', 'Paper Filters', 'Pack of 100 cone filters', 'USD', 650),
        ('sku-0006', 'Coffee Scale', 'Scale with timer, 0.1 g resolution', 'USD', 3499),
        ('sku-0007', 'Milk Frother', 'Handheld battery frother', 'USD', 2999),
        ('sku-0008', 'Travel Tumbler', 'Insulated tumbler, 470 ml', 'USD', 2250)
    """,
]

_COLUMNS = "product_id, name, description, currency_code, price_minor"


def _product(row: sqlite3.Row) -> Product:
    return Product(
        product_id=row["product_id"],
        name=row["name"],
        description=row["description"],
        currency_code=row["currency_code"],
        price_minor=row["price_minor"],
    )


def list_products(conn: sqlite3.Connection, after: str, limit: int) -> list[Product]:
    """Up to ``limit`` products with id > ``after``, ordered by id (keyset paging)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM products WHERE product_id > ? ORDER BY product_id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [_product(r) for r in rows]


def get_product(conn: sqlite3.Connection, product_id: str) -> Product | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM products WHERE product_id = ?", (product_id,)
    ).fetchone()
    return None if row is None else _product(row)
