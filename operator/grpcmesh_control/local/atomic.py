"""Writing a file that another process polls: never half of it.

The content goes to a hidden temporary file beside the target (the resource loader skips
dotfiles; the pid keeps concurrent writers apart), then one rename replaces the target.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, content: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        else:
            tmp.write_bytes(content)
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
