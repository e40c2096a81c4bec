from __future__ import annotations

import os
import time

import pytest

from grpcmesh_loadgen.procstat import cpu_seconds


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
