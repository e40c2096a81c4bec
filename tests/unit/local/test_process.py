"""The process edge: children in their own process group, SIGKILL after the stop bound."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import psutil

from grpcmesh_control.local.plan import ProcessSpec
from grpcmesh_control.local.process import ManagedProcess, death_signal_prefix

# Ignores SIGTERM and starts a grandchild, then waits: only SIGKILL to the group ends both.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _spec(tmp_path: Path, code: str) -> ProcessSpec:
    return ProcessSpec(
        name="stubborn", argv=(sys.executable, "-c", code), log=tmp_path / "out.log", cwd=tmp_path
    )


async def _grandchild(log: Path) -> int:
    for _ in range(100):
        text = log.read_text().strip() if log.exists() else ""
        if text:
            return int(text)
        await asyncio.sleep(0.05)
    raise AssertionError("the child never reported its own child")


async def test_stop_escalates_to_sigkill_for_the_whole_group(tmp_path: Path) -> None:
    process = ManagedProcess(
        _spec(tmp_path, STUBBORN), base_env=dict(os.environ), prefix=death_signal_prefix()
    )
    await process.start()
    grandchild = psutil.Process(await _grandchild(process.spec.log))
    assert os.getpgid(process.pid or 0) == process.pid  # leads its own group

    code = await process.stop(timeout=0.5)

    assert code == -signal.SIGKILL
    assert not process.running
    grandchild.wait(timeout=5)  # killed with its group, not orphaned


async def test_a_process_can_be_started_again_after_it_ended(tmp_path: Path) -> None:
    process = ManagedProcess(_spec(tmp_path, "print('hi')"), base_env=dict(os.environ))
    await process.start()
    assert await process.wait() == 0
    await process.start()
    assert await process.wait() == 0
    assert process.starts == 2
    assert process.spec.log.read_text() == "hi\nhi\n"  # appended: a restart keeps the old log


async def test_a_child_whose_launcher_is_gone_before_the_death_signal_exits_at_once(
    tmp_path: Path,
) -> None:
    """setpriv sets the parent-death signal after the fork: a launcher SIGKILLed in between
    leaves a child the signal never reaches (CI saw it once). The child checks, once the
    signal is set, that its parent is still the launcher; here it is not (the prefix names
    another pid), so it exits without running its command."""
    marker = tmp_path / "ran"
    spec = ProcessSpec(
        "child",
        (sys.executable, "-c", f"open({str(marker)!r}, 'w'); import time; time.sleep(60)"),
        tmp_path / "child.log",
        tmp_path,
    )
    orphaned = ManagedProcess(
        spec, base_env=dict(os.environ), prefix=death_signal_prefix(parent=os.getppid())
    )
    await orphaned.start()
    assert await asyncio.wait_for(orphaned.wait(), 15) == 128 + signal.SIGTERM
    assert not marker.exists()

    # With its launcher still there (the default: this process), the command runs.
    kept = ManagedProcess(spec, base_env=dict(os.environ), prefix=death_signal_prefix())
    await kept.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not marker.exists():
            assert loop.time() < deadline, "the child never ran its command"
            await asyncio.sleep(0.01)
    finally:
        await kept.stop(timeout=5)


# A launcher that starts one long-lived child and reports its pid, then waits forever.
LAUNCHER = """
import asyncio, os, sys
from pathlib import Path
from grpcmesh_control.local.plan import ProcessSpec
from grpcmesh_control.local.process import ManagedProcess, death_signal_prefix

async def main() -> None:
    spec = ProcessSpec("child", (sys.executable, "-c", "import time; time.sleep(60)"),
                       Path(sys.argv[1]) / "child.log", Path(sys.argv[1]))
    child = ManagedProcess(spec, base_env=dict(os.environ), prefix=death_signal_prefix())
    await child.start()
    print(child.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_children_die_with_a_killed_launcher(tmp_path: Path) -> None:
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LAUNCHER, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    assert launcher.stdout is not None
    try:
        child = psutil.Process(int(await asyncio.wait_for(launcher.stdout.readline(), 30)))
        assert child.is_running()
        # Wait for the command itself: this test is about the signal once set (the test above
        # covers a launcher gone before).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while "time.sleep(60)" not in " ".join(child.cmdline()):
            assert loop.time() < deadline, child.cmdline()
            await asyncio.sleep(0.01)
    finally:
        launcher.kill()  # SIGKILL: no chance to stop its children
        await launcher.wait()
    # The kernel's parent-death signal (setpriv --pdeathsig) ends the child.
    _, alive = await asyncio.to_thread(psutil.wait_procs, [child], 15)
    assert alive == [], [p.status() for p in alive]
