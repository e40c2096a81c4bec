"""Run a command so that it gets SIGTERM if the launcher dies without stopping it.

Usage: python -S _orphan_guard.py LAUNCHER_PID COMMAND [ARG ...]

Linux only (PR_SET_PDEATHSIG survives exec); elsewhere it just execs. Run as a script by path, not
as a module, so starting it does not import the package (and grpc) first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    launcher, command = int(argv[1]), argv[2:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != launcher:  # the launcher died before prctl took effect
            sys.exit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
