"""docs/writing-a-service.md, section 10, run as written: a new service (proto, code,
MeshService, descriptor set) applied to a running mesh, called through the ingress and by
reflection, rolled out as a 90/10 canary under open-loop load, and removed, in one shell as a
reader would type it.

The blocks come from the markdown itself, so the guide and this test cannot drift: a block
``<lang> file=PATH`` is written to PATH; a ``sh`` block runs in one long-lived bash (variables
and the working directory carry over, like a terminal); ``sh background`` starts something
the next blocks need, and the test waits (bounded) for what a reader waits for by eye: every
replica ready and every proxy on the current config, and after an ``apply`` or ``delete``, on
the new one. Then each outcome the guide promises is checked in the blocks' output.
"""

from __future__ import annotations

import json
import math
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
from grpcmesh_control.mesh.translate.routes import NOT_EXPOSED
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


@dataclass
class Step:
    block: Block
    output: str
    started: float
    """Wall-clock time the block was sent to the shell."""
    settled: float
    """Wall-clock time it was done, and for a change to the mesh, every proxy on the result."""


def run_guide(workdir: Path, run_dir: Path, terminal: Terminal) -> list[Step]:
    steps: list[Step] = []
    for block in guide_blocks():
        if block.file is not None:
            path = workdir / block.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
            continue
        if block.lang != "sh":
            continue  # output shown to the reader
        changes = "grpcmesh apply" in block.text or "grpcmesh delete" in block.text
        before = status(run_dir) if changes else None
        started = time.time()
        output = terminal.run(block.text, timeout=300)
        if block.background:
            wait_for("the mesh ready and converged", lambda: mesh_ready(run_dir), 300)
        if before is not None:
            old = before["config_version"]

            def moved_on(old: str = old) -> bool:
                doc = mesh_ready(run_dir)
                return doc is not None and doc["config_version"] != old

            wait_for("every proxy on the changed config", moved_on, 120)
        steps.append(Step(block, output, started, time.time()))
    return steps


def step(steps: list[Step], command: str, nth: int = 0) -> Step:
    """The ``nth`` step whose block contains ``command``."""
    found = [s for s in steps if command in s.block.text]
    assert len(found) > nth, f"no step {nth} running {command!r} in the guide"
    return found[nth]


def near_a_tenth(v2: int, total: int) -> bool:
    """v2's share of ``total`` calls is 10 % within 4 standard deviations (and 2 points)."""
    sigma = math.sqrt(0.1 * 0.9 / total)
    return abs(v2 / total - 0.1) <= 4 * sigma + 0.02


@pytest.mark.timeout(900)  # a mesh, two live applies, a minute of load, a delete
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
    try:
        steps = run_guide(workdir, run_dir, terminal)

        # Started with catalog only; reviews came with apply, its protos with it.
        up = step(steps, "grpcmesh status\n")
        assert "catalog" in up.output and "reviews" not in up.output, up.output
        added = step(steps, "grpcmesh apply")
        assert added.output.splitlines()[:2] == [
            "applied reviews/mesh/reviews.yaml",
            "protos from reviews.binpb",
        ], added.output
        assert "started reviews/v1-0 (ready)" in added.output, added.output

        # Called through the ingress ...
        called = step(steps, "python reviews/call.py")
        assert called.output.splitlines() == [
            "Espresso Beans 1kg: ['Rich crema.', 'A bit too dark for me.']",
            "served by v1 1",
        ]
        # ... and by reflection: listed, described and called by name.
        reflected = step(steps, "python reviews/reflect.py").output.splitlines()
        listed = reflected[0].removeprefix("services: ").split(", ")
        assert "reviews.v1.ReviewService" in listed, reflected
        assert "rpc GetReviews(GetReviewsRequest) returns (GetReviewsResponse)" in reflected
        answer = json.loads(reflected[-1])
        assert answer["productName"] == "Espresso Beans 1kg" and answer["servedBy"] == "v1"

        # The canary started v2 under load, and the load lost no call.
        canary = step(steps, "grpcmesh apply", 1)
        assert "started reviews/v2-0 (ready)" in canary.output, canary.output
        splits = re.findall(
            r"^served by v1 (\d+), v2 (\d+)$", step(steps, "sku-0001 200").output, re.MULTILINE
        )
        # the load's summary, printed when it ends, can come out during any later block
        (sequential,) = [(v1, v2) for v1, v2 in splits if int(v1) + int(v2) == 200]
        v2 = int(sequential[1])
        assert 5 <= v2 <= 45, sequential  # 10% of 200, within ~4 sigma
        load = "\n".join(s.output for s in steps[steps.index(step(steps, "reviews/load.py")) :])
        assert re.search(r"^\d+ calls at 50/s, 0 failed$", load, re.MULTILINE), load
        (after,) = re.findall(r"^from v2's first answer on: v1 (\d+), v2 (\d+)$", load, re.M)
        assert near_a_tenth(int(after[1]), int(after[0]) + int(after[1])), load
        calls = json.loads((workdir / "reviews" / "load.json").read_text())
        assert all(c["code"] == "OK" for c in calls)
        sent = [c["sent"] for c in calls]
        # open loop at 50/s, running before the canary was applied and after it took effect
        assert min(sent) < canary.started and max(sent) > canary.settled, (canary, sent[-1])
        late = [c["served_by"] for c in calls if c["sent"] > canary.settled]
        assert len(late) >= 200 and near_a_tenth(late.count("v2"), len(late)), len(late)

        # Removed: no process, no status row, and a call fails with a clear status.
        removed = step(steps, "grpcmesh delete reviews")
        assert "stopped reviews/v1-0" in removed.output, removed.output
        assert "stopped reviews/v2-0" in removed.output, removed.output
        assert processes_using(run_dir / "reviews") == []
        shown = removed.output.split("stopped reviews/v2-0", 1)[1]
        assert "catalog" in shown and "reviews" not in shown, removed.output
        refused = step(steps, "|| echo").output.splitlines()
        assert refused[0] == f"call failed: UNIMPLEMENTED: {NOT_EXPOSED}", refused
        assert refused[-1] == "exit status 1"

        assert "stopped" in steps[-1].output
        assert read_state(run_dir) is None
        assert processes_using(run_dir) == []
    finally:
        print("\n".join(terminal.transcript))  # pytest shows it when the test fails
        terminal.close()
        leftovers = processes_using(run_dir)
        kill_all(leftovers)
