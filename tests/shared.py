"""Where the tests find ``../shared`` (published contracts, the real Kubernetes control plane,
image-kit): one setting, ``GRPCMESH_SHARED``, defaulting to the folder beside the checkout.

A missing piece fails the test that needs it with a message saying what to provide; it never
skips (CI has ../shared beside the clone).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRPCMESH_SHARED") or REPO.parent / "shared")

__all__ = ["REPO", "SHARED", "shared_path", "tool"]


def shared_path(*parts: str) -> Path:
    """``SHARED/parts``; an ``AssertionError`` naming the setting when it does not exist."""
    path = SHARED.joinpath(*parts)
    assert path.exists(), (
        f"{path} not found: these tests need the shared folder (contracts, kube, images) "
        f"beside the checkout, or GRPCMESH_SHARED=/path/to/shared"
    )
    return path


def tool(name: str) -> str:
    """An executable of this venv (beside the running Python: grpcmesh, kubectl, envoy), else
    on PATH; an ``AssertionError`` saying how to get it otherwise."""
    found = shutil.which(
        name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    assert found, f"{name} not found: run the tests through `make test` (the venv provides it)"
    return found
