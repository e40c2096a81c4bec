"""Where the tests find ``../shared`` (published contracts, the real Kubernetes control plane,
image-kit): one setting, ``GRPCMESH_SHARED``, defaulting to the folder beside the checkout.

A missing piece fails the test that needs it with a message saying what to provide; it never
skips (CI has ../shared beside the clone).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRPCMESH_SHARED") or REPO.parent / "shared")

__all__ = ["REPO", "SHARED", "shared_path"]


def shared_path(*parts: str) -> Path:
    """``SHARED/parts``; an ``AssertionError`` naming the setting when it does not exist."""
    path = SHARED.joinpath(*parts)
    assert path.exists(), (
        f"{path} not found: these tests need the shared folder (contracts, kube, images) "
        f"beside the checkout, or GRPCMESH_SHARED=/path/to/shared"
    )
    return path
