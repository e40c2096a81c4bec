"""Catalog reference service: a read-only, cached product catalogue."""
