"""Writing a file that another process polls: never half of it.

The content goes to a hidden temporary file beside the target (the resource loader skips
dotfiles; the pid keeps concurrent writers apart), then one rename replaces the target.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, content: str | bytes, *, mode: int | None = None) -> None:
    """With ``mode`` (e.g. 0o600 for a secret), the file has that mode from its creation on:
    never readable by others, not even for a moment."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = content.encode() if isinstance(content, str) else content
    try:
        if mode is None:
            tmp.write_bytes(data)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            tmp.chmod(mode)  # O_CREAT does not change the mode of an existing file
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
