"""Inventory reference service: stock levels and per-order reservations."""
