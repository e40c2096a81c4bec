"""Payments reference service: idempotent charges and refunds with injectable failures."""
