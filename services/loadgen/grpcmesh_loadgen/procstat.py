"""CPU time of other processes, from Linux /proc (no psutil needed)."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by every thread of ``pid``.

    Raises ``FileNotFoundError`` if the process is gone.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces, so count fields from its closing ")";
    # utime and stime are fields 14 and 15 of proc(5), i.e. 11 and 12 after the state field.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def thread_run_seconds(pid: int) -> float:
    """On-CPU seconds so far of every live thread of ``pid``, in nanoseconds' resolution: the
    scheduler's own runtime (``/proc/<pid>/task/<tid>/schedstat``, first field), where
    ``cpu_seconds`` counts whole clock ticks (10 ms). For costs of a few hundred µs per event;
    a thread that has exited no longer counts, so measure long-lived processes (Envoy's threads
    live as long as it does).

    Raises ``FileNotFoundError`` if the process is gone.
    """
    tasks = Path(f"/proc/{pid}/task")
    total = 0
    for task in tasks.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:  # the thread exited meanwhile
            continue
    return total / 1e9
