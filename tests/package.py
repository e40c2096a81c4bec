"""The project as a user gets it: the wheel built from this checkout, installed into a fresh
venv outside it, so what runs from there proves the package is self-contained (no checkout
paths, no generated code the wheel does not ship).

The venv is built the way ``operator/Dockerfile`` builds the image's: the locked runtime
dependencies (``uv export --frozen --no-dev``) as constraints, then opentelemetry-proto
reinstalled over the stale copy inside xds-protos. ``uv`` installs from its cache, so a venv
costs a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.shared import REPO

__all__ = ["InstalledPackage", "install_package"]

_UV = REPO / ".tools" / "uv" / "bin" / "uv"
_TIMEOUT = 300.0


@dataclass(frozen=True)
class InstalledPackage:
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def grpcmesh(self) -> Path:
        """The ``grpcmesh`` console script (the images' entrypoint)."""
        return self.bin / "grpcmesh"


def _run(*argv: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, argv))} -> {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def install_package(workdir: Path, extras: tuple[str, ...] = ()) -> InstalledPackage:
    """Build the wheel into ``workdir`` and install it, with ``extras``, in ``workdir/venv``.
    ``workdir`` must lie outside the checkout (nothing there may be importable by accident)."""
    assert not workdir.resolve().is_relative_to(REPO), f"{workdir} is inside the checkout"
    assert _UV.exists(), f"{_UV} not found: run `make venv` first (it installs the pinned uv)"
    dist = workdir / "dist"
    _run(_UV, "build", "--wheel", "--out-dir", dist, REPO, cwd=workdir)
    (wheel,) = dist.glob("grpcmesh-*.whl")
    constraints = workdir / "runtime.txt"
    constraints.write_text(
        _run(
            _UV,
            "export",
            "--frozen",
            "--no-dev",
            "--all-extras",  # constraints only pin: what is installed is the wheel's choice
            "--no-emit-project",
            "--no-hashes",
            "--project",
            REPO,
            cwd=workdir,
        ),
        encoding="utf-8",
    )
    venv = workdir / "venv"
    # The interpreter running the tests: the same minor version the lock is for.
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=workdir)
    python = venv / "bin" / "python"
    requirement = f"grpcmesh[{','.join(extras)}] @ {wheel.as_uri()}" if extras else str(wheel)
    _run(_UV, "pip", "install", "--python", python, "-c", constraints, requirement, cwd=workdir)
    _run(
        _UV,
        "pip",
        "install",
        "--python",
        python,
        "--reinstall",
        "--no-deps",
        "-c",
        constraints,
        "opentelemetry-proto",
        cwd=workdir,
    )
    return InstalledPackage(wheel=wheel, venv=venv)
