"""End-to-end fixtures. The mesh is module-scoped: starting 14 processes on a shared 2-core
machine takes a while, and the tests that change it put it back as they found it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("e2e") / "run")
    mesh.start()
    try:
        yield mesh
    finally:
        # 143: stopped by SIGTERM, as the fixture asked.
        assert mesh.stop() == 128 + signal.SIGTERM, mesh.log.read_text()[-3000:]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
