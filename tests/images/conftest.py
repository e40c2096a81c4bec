"""The image tier: the five images built once per session (podman's layer cache makes a rerun
rebuild only what changed), and their sizes in the terminal summary of every run."""

from __future__ import annotations

import time
from collections.abc import Mapping

import pytest

from tests.deploy.checks import dockerfiles
from tests.images.kit import REPORT, BuiltImage, ImageKit


@pytest.fixture(scope="session")
def image_kit() -> ImageKit:
    kit = ImageKit.find()
    started = time.monotonic()
    kit.setup()  # idempotent: on CI's fresh machine it installs podman and the stand-ins
    REPORT.setup_seconds = time.monotonic() - started
    return kit


@pytest.fixture(scope="session")
def images(image_kit: ImageKit) -> Mapping[str, BuiltImage]:
    """skaffold artifact name -> the image built from its Dockerfile, in skaffold's order."""
    for name, dockerfile in dockerfiles().items():
        REPORT.built[name] = image_kit.build(name, dockerfile)
    return dict(REPORT.built)


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT.built:
        return
    terminalreporter.section("grpcmesh images")
    if REPORT.setup_seconds is not None:
        terminalreporter.write_line(f"image-kit setup: {REPORT.setup_seconds:.1f} s")
    terminalreporter.write_line(f"{'image':<20} {'size':>8} {'/opt/venv':>10} {'build':>8}")
    for name, built in REPORT.built.items():
        venv = _mb(REPORT.venv_bytes[name]) if name in REPORT.venv_bytes else "-"
        terminalreporter.write_line(
            f"{name:<20} {_mb(built.size_bytes):>8} {venv:>10} {built.build_seconds:>7.1f}s"
        )
