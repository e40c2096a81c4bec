"""One child process of the launcher: started in its own session, stopped by process group.

Each child leads its own process group, so a terminal's Ctrl-C reaches only the launcher (which
stops the children in order) and a signal to the group also reaches anything the child spawned.
On Linux, ``setpriv --pdeathsig TERM`` makes the kernel send SIGTERM to the child if the
launcher dies without stopping it (killed with SIGKILL, say), so no orphan holds a port; a
child whose launcher died before the signal was set exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path

from grpcmesh_control.local.plan import ProcessSpec

__all__ = ["ManagedProcess", "death_signal_prefix", "is_alive"]

log = logging.getLogger(__name__)


# Run after setpriv has set the parent-death signal: a launcher that died before that (between
# fork and prctl) left this child with another parent already, and the signal would never come.
_STILL_OUR_PARENT = 'test "$PPID" = {parent} || exit 143; exec "$@"'


def death_signal_prefix(parent: int | None = None) -> tuple[str, ...]:
    """``setpriv --pdeathsig TERM``, then a shell that exits at once unless its parent is still
    ``parent`` (this process by default), where util-linux and a shell exist; else nothing."""
    setpriv, sh = shutil.which("setpriv"), shutil.which("sh")
    if not (setpriv and sh):
        return ()
    launcher = os.getpid() if parent is None else parent
    return (
        setpriv,
        "--pdeathsig",
        "TERM",
        "--",
        sh,
        "-c",
        _STILL_OUR_PARENT.format(parent=launcher),
        "grpcmesh-child",
    )


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie (ended, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs: trust kill(0)
        return True
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class ManagedProcess:
    """``start`` may be called again after the process ended (the control plane restarts)."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        base_env: Mapping[str, str],
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.spec = spec
        self._env = {**base_env, **spec.env}
        self._prefix = prefix
        self._process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.spec.name} is already running")
        self.spec.log.parent.mkdir(parents=True, exist_ok=True)
        # Append: a restarted control plane keeps the log of the run that died.
        with self.spec.log.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                *self._prefix,
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.spec.cwd,
                env=self._env,
                start_new_session=True,
            )
        self.starts += 1
        log.debug("started %s (pid %s)", self.spec.name, self._process.pid)

    async def wait(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.spec.name} was never started")
        return await self._process.wait()

    def signal(self, sig: signal.Signals) -> None:
        """Signal the process group (nothing if the process already ended)."""
        if not self.running or self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, sig)

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM, then SIGKILL if the process has not ended within ``timeout`` seconds."""
        if self._process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            log.warning("%s did not stop within %.1fs: SIGKILL", self.spec.name, timeout)
            self.signal(signal.SIGKILL)
            return await self._process.wait()
