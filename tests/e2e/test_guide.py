"""docs/writing-a-service.md, section 10, run as written: a new service from proto to a call
through the ingress, then a 90/10 canary, in one shell as a reader would type it.

The blocks come from the markdown itself, so the guide and this test cannot drift: a block
``<lang> file=PATH`` is written to PATH; a ``sh`` block runs in one long-lived bash (variables
and the working directory carry over, like a terminal); ``sh background`` starts something
the next blocks need, and the test waits (bounded) for what a reader waits for by eye: every
replica ready and every proxy on the current config, and after an ``apply``, on the new one.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from grpcmesh_control.local.launcher import read_state
from tests.e2e.harness import REPO, converged, grpcmesh, kill_all, processes_using

pytestmark = pytest.mark.slow

GUIDE = REPO / "docs" / "writing-a-service.md"
SECTION = "## 10. "
_FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    lang: str
    info: str
    text: str

    @property
    def file(self) -> str | None:
        match = re.search(r"\bfile=(\S+)", self.info)
        return match.group(1) if match else None

    @property
    def background(self) -> bool:
        return self.lang == "sh" and "background" in self.info.split()


def guide_blocks() -> list[Block]:
    text = GUIDE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    return [Block(m.group(1), m.group(2).strip(), m.group(3)) for m in _FENCE.finditer(section)]


class Terminal:
    """One bash fed block by block; a block is done when its marker line comes back, and a
    failing command ends the shell (``set -e``), which fails the step."""

    def __init__(self, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "VIRTUAL_ENV")}
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self._steps = 0
        self.run("set -eo pipefail", timeout=10)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def run(self, block: str, *, timeout: float) -> str:
        """Run ``block``; its output (and whatever background jobs printed meanwhile)."""
        assert self.process.stdin is not None
        self._steps += 1
        marker = f"__guide_step_{self._steps}_done__"
        self.transcript.append(f"$ {block.strip()}")
        self.process.stdin.write(f"{block}\necho {marker}\n")
        self.process.stdin.flush()
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(self._failed(f"not done in {timeout:g}s", out)) from None
            if line is None:
                raise AssertionError(self._failed("the shell exited (a command failed)", out))
            if line == marker:
                self.transcript += out
                return "\n".join(out)
            out.append(line)

    def _failed(self, why: str, out: list[str]) -> str:
        return f"{why}:\n" + "\n".join([*self.transcript, *out])[-6000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def status(run_dir: Path) -> dict[str, Any] | None:
    try:
        result = grpcmesh("status", "--json", "--state-dir", str(run_dir), timeout=120)
    except subprocess.TimeoutExpired:  # a busy machine; the caller polls again
        return None
    if result.returncode != 0:
        return None
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def wait_for(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r})")


def mesh_ready(run_dir: Path) -> dict[str, Any] | None:
    state = read_state(run_dir)
    if state is None or not state.replicas or not all(r.ready for r in state.replicas):
        return None
    doc = status(run_dir)
    return doc if doc is not None and converged(doc) else None


def test_the_guide_runs_as_written(tmp_path: Path) -> None:
    blocks = guide_blocks()
    assert any(b.background for b in blocks) and any(b.file for b in blocks)
    workdir = tmp_path / "work"
    workdir.mkdir()
    # What the guide's "from the repository root" provides; what it creates lands here.
    for name in (".venv", "manifests"):
        (workdir / name).symlink_to(REPO / name)
    run_dir = workdir / ".run" / "mesh"
    terminal = Terminal(workdir)
    outputs: list[str] = []
    try:
        for block in blocks:
            if block.file is not None:
                path = workdir / block.file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.text)
            elif block.lang == "sh":
                before = status(run_dir) if "grpcmesh apply" in block.text else None
                outputs.append(terminal.run(block.text, timeout=300))
                if block.background:
                    wait_for("the mesh ready and converged", lambda: mesh_ready(run_dir), 300)
                if before is not None:
                    old = before["config_version"]

                    def moved_on(old: str = old) -> bool:
                        doc = mesh_ready(run_dir)
                        return doc is not None and doc["config_version"] != old

                    wait_for("every proxy on the applied config", moved_on, 120)
        transcript = "\n".join(outputs)
        # What the guide says the reader sees.
        assert "Espresso Beans 1kg: ['Rich crema.', 'A bit too dark for me.']" in transcript
        assert "served by v1 1\n" in transcript + "\n"
        (canary,) = re.findall(r"^served by v1 (\d+), v2 (\d+)$", transcript, re.MULTILINE)
        v1, v2 = map(int, canary)
        assert v1 + v2 == 200 and 5 <= v2 <= 45, canary  # 10% of 200, within ~4 sigma
        assert "stopped" in outputs[-1]
        assert read_state(run_dir) is None
        assert processes_using(run_dir) == []
    finally:
        terminal.close()
        leftovers = processes_using(run_dir)
        kill_all(leftovers)
