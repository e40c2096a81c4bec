"""Our Dockerfiles built and run for real, with ``../shared/images/image-kit`` (podman on
stand-in base images; see its README).

``ImageKit.setup`` is idempotent (fast once the stand-ins exist; installs podman and builds them
on a fresh machine). ``build`` keeps podman's layer cache, so a rerun rebuilds only what changed.
Every container started here has a name from ``container_name`` and is removed with
``podman rm -f`` by whoever started it; every podman call has a timeout.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.shared import REPO, shared_path

__all__ = [
    "REPORT",
    "BuiltImage",
    "ImageKit",
    "ImageKitError",
    "TierReport",
    "container_name",
    "image_tag",
]

SETUP_TIMEOUT = 900.0  # a fresh machine: apt-get podman, debootstrap a Python base
BUILD_TIMEOUT = 900.0  # a cold build downloads every locked wheel
RUN_TIMEOUT = 120.0

# Tags of this checkout's test images: podman's storage is per machine, so two checkouts
# building at once must not overwrite each other's tags (the layer cache is still shared).
_CHECKOUT = hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
_containers = itertools.count()


def image_tag(image: str) -> str:
    """Where the image tier tags ``image`` (e.g. grpcmesh-catalog) for this checkout."""
    return f"localhost/grpcmesh-test/{image}:{_CHECKOUT}"


def container_name(stem: str) -> str:
    """A container name unique to this process, so concurrent runs never collide."""
    return f"grpcmesh-test-{stem}-{os.getpid()}-{next(_containers)}"


class ImageKitError(AssertionError):
    """image-kit exited non-zero; the message holds its command and output."""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    """The skaffold artifact name, e.g. grpcmesh-operator."""
    tag: str
    build_seconds: float
    size_bytes: int
    """``podman image inspect --format {{.Size}}``: every layer, the stand-in base included."""


@dataclass
class TierReport:
    """What the image tier measured, for the terminal summary (conftest.py)."""

    setup_seconds: float | None = None
    built: dict[str, BuiltImage] = field(default_factory=dict)
    venv_bytes: dict[str, int] = field(default_factory=dict)
    """du of /opt/venv inside each image: what the project adds to the base image."""


REPORT = TierReport()


@dataclass(frozen=True)
class ImageKit:
    path: Path

    @classmethod
    def find(cls) -> ImageKit:
        return cls(shared_path("images", "image-kit"))

    def call(
        self, *args: str, timeout: float = RUN_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``image-kit ARGS``; with ``check``, an ``ImageKitError`` with its output on failure."""
        result = subprocess.run(
            [str(self.path), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise ImageKitError(
                f"image-kit {' '.join(args)} -> {result.returncode}\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def podman(
        self, *args: str, timeout: float = RUN_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.call("podman", *args, timeout=timeout, check=check)

    def setup(self) -> None:
        self.call("setup", timeout=SETUP_TIMEOUT)

    def build(self, name: str, dockerfile: Path) -> BuiltImage:
        """Build ``dockerfile`` from the repository root as ``image_tag(name)``."""
        tag = image_tag(name)
        started = time.monotonic()
        self.call("build", "-q", "-f", str(dockerfile), "-t", tag, ".", timeout=BUILD_TIMEOUT)
        seconds = time.monotonic() - started
        size = int(self.podman("image", "inspect", "--format", "{{.Size}}", tag).stdout)
        return BuiltImage(name, tag, seconds, size)

    def run(
        self, image: str, *args: str, options: Sequence[str] = (), timeout: float = RUN_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``image-kit run --rm OPTIONS IMAGE ARGS`` to completion; the result, whatever its
        exit code. On a timeout the named container is removed before re-raising."""
        name = container_name("run")
        try:
            return self.call(
                "run", "--rm", "--name", name, *options, image, *args, timeout=timeout, check=False
            )
        finally:
            self.remove(name)

    def start(self, image: str, *args: str, name: str, options: Sequence[str] = ()) -> None:
        """``image-kit run -d``: the caller must ``remove(name)`` (in a finally)."""
        self.call("run", "-d", "--name", name, *options, image, *args)

    def remove(self, name: str) -> None:
        """``podman rm -f`` (nothing to do when it is gone already)."""
        self.podman("rm", "-f", "--ignore", name, check=False)
