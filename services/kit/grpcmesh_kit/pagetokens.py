"""Page tokens: opaque to the client, tamper-evident to the server.

A token is ``base64url(JSON payload) "." base64url(HMAC-SHA256(key, payload)[:16])``. Only a
server holding the key can make one, so a forged or edited token (a position past the int64
range, another customer's filter) is refused as INVALID_ARGUMENT before anything reads it; the
service still checks the decoded values' ranges, as for any input. The key lives in the
service's own database (:meth:`PageTokens.from_store`), so replicas sharing that database
accept each other's tokens and a token never outlives the data it points into.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Mapping

from grpcmesh_kit.errors import InvalidArgument
from grpcmesh_kit.store import Store

MAX_TOKEN_LENGTH = 1024
"""Longer tokens are refused unread: nothing this module issues comes close."""

_MAC_BYTES = 16
_KEY_BYTES = 32

TokenValue = str | int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokens:
    """Issues and checks the page tokens of one service (``field`` names the request field
    in errors)."""

    def __init__(self, key: bytes, field: str = "page_token") -> None:
        if len(key) < 16:
            raise ValueError("a page token key needs at least 16 bytes")
        self._key = key
        self.field = field

    @classmethod
    async def from_store(cls, store: Store, name: str = "page_tokens") -> PageTokens:
        """The key called ``name`` in ``store``, created (random) by whichever replica asks
        first: one transaction, so replicas sharing the database agree on it."""
        return cls(await store.run(lambda conn: stored_key(conn, name)))

    def _mac(self, payload: bytes) -> bytes:
        return hmac.digest(self._key, payload, hashlib.sha256)[:_MAC_BYTES]

    def encode(self, values: Mapping[str, TokenValue]) -> str:
        payload = json.dumps(dict(values), sort_keys=True, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, token: str) -> dict[str, TokenValue]:
        """The values ``token`` was issued with; InvalidArgument unless this key issued it."""
        forged = InvalidArgument(self.field, "is not a token this server issued")
        if len(token) > MAX_TOKEN_LENGTH:
            raise forged
        encoded_payload, dot, encoded_mac = token.partition(".")
        try:
            payload = _unb64(encoded_payload)
            mac = _unb64(encoded_mac)
        except (ValueError, binascii.Error):
            raise forged from None
        if not dot or not hmac.compare_digest(mac, self._mac(payload)):
            raise forged
        values = json.loads(payload)  # we signed it, so it is our JSON object
        if not isinstance(values, dict):
            raise forged
        return values


def stored_key(conn: sqlite3.Connection, name: str) -> bytes:
    """The secret ``name`` in the kit's own table of this database, made on first use."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS kit_secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)"
        " WITHOUT ROWID"
    )
    conn.execute(
        "INSERT OR IGNORE INTO kit_secrets (name, value) VALUES (?, randomblob(?))",
        (name, _KEY_BYTES),
    )
    (value,) = conn.execute("SELECT value FROM kit_secrets WHERE name = ?", (name,)).fetchone()
    return bytes(value)
