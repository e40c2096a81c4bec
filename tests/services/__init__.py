"""Tests of the reference services (catalog, inventory, payments, orders)."""
