"""The kit's public surface is pinned: a service written against it keeps working, and a change
to it is a deliberate edit here (and in docs/kit-api.md)."""

from __future__ import annotations

import re

import grpcmesh_kit
from tests.shared import REPO


def test_kit_all() -> None:
    assert sorted(grpcmesh_kit.__all__) == sorted(
        [
            "REQUEST_ID_HEADER", "Aborted", "AlreadyExists", "ChannelFactory",
            "FailedPrecondition", "InvalidArgument", "KitSettings", "NotFound", "PageTokens",
            "RpcContext",
            "ServiceApp", "ServiceError", "SettingsWatcher", "Store", "Unavailable",
            "UnknownService", "configure_logging", "create_tracer_provider", "current_rpc",
            "detached_context",
        ]
    )  # fmt: skip
    assert all(hasattr(grpcmesh_kit, name) for name in grpcmesh_kit.__all__)


def test_every_public_name_is_documented() -> None:
    guide = (REPO / "docs" / "kit-api.md").read_text(encoding="utf-8")
    missing = [name for name in grpcmesh_kit.__all__ if not re.search(rf"\b{name}\b", guide)]
    assert missing == [], f"docs/kit-api.md does not mention {missing}"
