from __future__ import annotations

import os
import time

import pytest

from grpcmesh_loadgen.procstat import cpu_seconds, thread_run_seconds


def test_counts_this_process_cpu_time() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn 0.2 s of CPU, bounded
        pass
    after = cpu_seconds(os.getpid())
    assert 0.1 <= after - before <= 2.0


def test_a_missing_process_raises() -> None:
    with pytest.raises(FileNotFoundError):
        cpu_seconds(2**22 + 1)  # above pid_max's default ceiling


def test_thread_run_seconds_counts_this_process_in_nanoseconds() -> None:
    before, ticks_before = thread_run_seconds(os.getpid()), cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn 0.2 s of CPU, bounded
        pass
    used, ticks = thread_run_seconds(os.getpid()) - before, cpu_seconds(os.getpid()) - ticks_before
    assert 0.1 <= used <= 2.0
    assert abs(used - ticks) < 0.05  # the same time, counted finer
    assert used != round(used, 2)  # not whole 10 ms ticks


def test_thread_run_seconds_of_a_missing_process_raises() -> None:
    with pytest.raises(FileNotFoundError):
        thread_run_seconds(2**22 + 1)
