"""The Dockerfiles: multi-stage, pinned bases, a numeric non-root user equal to the UID the
operator and chart run our containers as, exec-form entrypoints, OCI labels, COPY sources that
exist, one builder stage shared word for word, and each image installing only its pyproject
extra (checked against the lock). Parsed here; no Docker engine needed (tests/images builds
and runs the images)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from grpcmesh_control.cluster.objects.settings import AppDefaults

from .checks import (
    IMAGE_EXTRA,
    REPO,
    Stage,
    copy_sources,
    dockerfiles,
    excluded_distributions,
    global_args,
    normalized,
    pod_specs,
    render,
    stages,
)

FILES = dockerfiles()
OCI_LABELS = ("title", "description", "source", "licenses", "version")
# What each image runs by default (ENTRYPOINT + CMD).
DEFAULT_ARGV = {
    "grpcmesh-operator": ["grpcmesh", "operator"],
    "grpcmesh-catalog": ["python", "-m", "grpcmesh_catalog"],
    "grpcmesh-inventory": ["python", "-m", "grpcmesh_inventory"],
    "grpcmesh-payments": ["python", "-m", "grpcmesh_payments"],
    "grpcmesh-orders": ["python", "-m", "grpcmesh_orders"],
}
_PINNED_TAG = re.compile(r"^[^:@]+:(?P<tag>[^:@]+)$")
_EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+")


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def final(path: Path) -> Stage:
    return stages(path)[-1]


@pytest.mark.parametrize("image", FILES)
def test_multi_stage_with_pinned_bases(image: str) -> None:
    found = stages(FILES[image])
    assert len(found) >= 2, f"{image}: builder and runtime stages expected"
    named = {s.name for s in found if s.name}
    for stage in found:
        refs = [stage.base]
        refs += [
            w.removeprefix("--from=")
            for c in stage.all("COPY")
            for w in c.args.split()
            if w.startswith("--from=")
        ]
        for ref in refs:
            if ref in named:
                continue  # an earlier stage
            if "@sha256:" in ref:
                continue
            match = _PINNED_TAG.match(ref.split("/")[-1])
            assert match, f"{image}: {ref} has no tag or digest"
            assert _EXACT_VERSION.match(match["tag"]), f"{image}: {ref} is not an exact version"
            assert "latest" not in ref


def test_python_and_uv_match_the_project() -> None:
    """The base image's Python is the one the lock resolves for, and uv is the Makefile's pin."""
    makefile = (REPO / "Makefile").read_text()
    (uv_version,) = re.findall(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    requires = pyproject()["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    for image, path in FILES.items():
        bases = {stage.base for stage in stages(path)}
        # One base for both stages: the venv's interpreter links to the base image's Python.
        assert len(bases) == 1, f"{image}: builder and runtime bases differ: {bases}"
        assert re.match(r"^python:3\.11\.\d+-slim-bookworm$", bases.pop()), image
        text = path.read_text()
        assert f"ghcr.io/astral-sh/uv:{uv_version} " in text, f"{image}: uv is not {uv_version}"


@pytest.mark.parametrize("image", FILES)
def test_runtime_runs_as_the_operators_uid(image: str) -> None:
    users = final(FILES[image]).all("USER")
    assert users, f"{image}: the final stage sets no USER"
    user = users[-1].args
    assert re.fullmatch(r"\d+:\d+", user), f"{image}: USER {user} is not numeric uid:gid"
    uid, gid = (int(x) for x in user.split(":"))
    assert uid == gid == AppDefaults().uid != 0


def test_the_chart_runs_the_operator_as_the_image_user() -> None:
    (operator,) = [
        spec
        for where, spec in pod_specs(render({"referenceServices": {"enabled": False}}))
        if where == "Deployment/grpcmesh-operator"
    ]
    context = operator.get("securityContext", {}) | operator["containers"][0].get(
        "securityContext", {}
    )
    assert context["runAsUser"] == AppDefaults().uid


def exec_form(stage: Stage, keyword: str) -> list[str]:
    """The last ENTRYPOINT or CMD of ``stage`` (exec form: a JSON array, no shell)."""
    found = stage.all(keyword)
    if not found:
        return []
    argv = json.loads(found[-1].args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), found[-1].text
    return argv


@pytest.mark.parametrize("image", FILES)
def test_exec_form_entrypoint_on_the_path(image: str) -> None:
    stage = final(FILES[image])
    assert exec_form(stage, "ENTRYPOINT"), f"{image}: no exec-form ENTRYPOINT"
    assert exec_form(stage, "ENTRYPOINT") + exec_form(stage, "CMD") == DEFAULT_ARGV[image]
    env = " ".join(i.args for i in stage.all("ENV"))
    assert "PATH=/opt/venv/bin:$PATH" in env  # `python` and `grpcmesh` are the venv's
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_the_chart_runs_what_the_images_run() -> None:
    """Kubernetes' command replaces ENTRYPOINT (and drops CMD); args replace CMD. Whatever the
    chart sets, each container must end up running its image's program."""
    objects = render({})
    containers = {
        c["image"].rsplit("/", 1)[-1].split(":")[0]: c
        for _, spec in pod_specs(objects)
        for c in spec["containers"]
    }
    workloads = {
        o["spec"]["workload"]["image"].rsplit("/", 1)[-1].split(":")[0]: o["spec"]["workload"]
        for o in objects
        if o["kind"] == "MeshService"
    }
    for image, path in FILES.items():
        stage = final(path)
        spec = containers.get(image) or workloads[image]
        command = spec.get("command") or exec_form(stage, "ENTRYPOINT")
        args = spec.get("args") or ([] if spec.get("command") else exec_form(stage, "CMD"))
        argv = [*command, *args]
        program, options = argv[: len(DEFAULT_ARGV[image])], argv[len(DEFAULT_ARGV[image]) :]
        assert program == DEFAULT_ARGV[image], f"{image}: runs {argv}"
        # Only options may follow (`grpcmesh operator operator ...` would be a broken CLI).
        assert not options or options[0].startswith("-"), f"{image}: runs {argv}"


@pytest.mark.parametrize("image", FILES)
def test_oci_labels(image: str) -> None:
    stage = final(FILES[image])
    labels = " ".join(i.args for i in stage.all("LABEL"))
    for key in OCI_LABELS:
        assert f"org.opencontainers.image.{key}=" in labels, f"{image}: no {key} label"
    assert f'org.opencontainers.image.title="{image}"' in labels
    license_ = pyproject()["project"]["license"]["text"]
    assert f'org.opencontainers.image.licenses="{license_}"' in labels
    version = pyproject()["project"]["version"]
    assert f"ARG VERSION={version}" in [i.text for i in stage.instructions]


@pytest.mark.parametrize("image", FILES)
def test_copy_sources_exist_and_survive_dockerignore(image: str) -> None:
    ignored = dockerignore()
    for stage in stages(FILES[image]):
        for copy in stage.all("COPY") + stage.all("ADD"):
            assert copy.keyword == "COPY", f"{image}: ADD fetches or unpacks; use COPY"
            sources = copy_sources(copy)
            if sources is None:
                continue
            for source in sources:
                assert (REPO / source).exists(), f"{image}: COPY {source}: no such path"
                top = source.rstrip("/").split("/")[0]
                assert source not in ignored and top not in ignored, (
                    f"{image}: COPY {source} is excluded by .dockerignore"
                )


def test_builder_stage_is_shared() -> None:
    """One builder, written once per Dockerfile: identical, so the builds share its layers."""
    builders = {image: stages(path)[0] for image, path in FILES.items()}
    for image, stage in builders.items():
        assert stage.name == "builder", image
    first = next(iter(builders.values()))
    for image, stage in builders.items():
        assert stage == first, f"{image}: builder stage differs from the others"


# How the builder passes the image's extra to uv: nothing when EXTRA is empty (a service).
EXTRA_FLAG = '${EXTRA:+--extra "$EXTRA"}'
UV = REPO / ".tools" / "uv" / "bin" / "uv"


def test_each_image_names_its_extra() -> None:
    """One line per Dockerfile says what the image installs beyond the base dependencies, and
    the shared builder passes it to every ``uv sync`` (a sync is exact: one without the extra
    would uninstall it again)."""
    extras = pyproject()["project"]["optional-dependencies"]
    assert set(FILES) == set(IMAGE_EXTRA)
    for image, path in FILES.items():
        assert global_args(path) == {"EXTRA": IMAGE_EXTRA[image]}, image
        assert IMAGE_EXTRA[image] in ("", *extras), f"{image}: no such extra"
        builder = stages(path)[0]
        assert [a.args for a in builder.all("ARG")] == ["EXTRA"], image
        syncs = [r.args for r in builder.all("RUN") if "uv sync" in r.args]
        assert len(syncs) == 2, image  # dependencies, then the project
        for run in syncs:
            (sync,) = [cmd for cmd in run.split("&&") if "uv sync" in cmd]
            assert sync.strip().endswith(EXTRA_FLAG), f"{image}: {sync.strip()}"
            assert "--no-dev" in sync and "--all-extras" not in sync, image


def locked_distributions(extra: str) -> set[str]:
    """Every distribution ``uv sync --no-dev [--extra extra]`` installs, from uv.lock."""
    assert UV.is_file(), f"{UV} missing: `make venv` bootstraps the pinned uv"
    command = [str(UV), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes"]
    command += ["--extra", extra] if extra else []
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True, timeout=60)
    names = {
        normalized(re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0])
        for line in out.stdout.splitlines()
        if line and not line.startswith((" ", "#", "-"))
    }
    assert "grpcio" in names, out.stdout  # the export was read, not an empty list
    return names


@pytest.mark.parametrize("image", FILES)
def test_image_closure_holds_only_what_it_runs(image: str) -> None:
    """The lock's closure of an image's install: services without kopf, a Kubernetes client,
    the Grafana SDK or Envoy; the operator without Envoy but with what it runs."""
    names = locked_distributions(IMAGE_EXTRA[image])
    for pattern in excluded_distributions(image):
        assert not fnmatch.filter(names, pattern), f"{image} would install {pattern}"
    if IMAGE_EXTRA[image] == "operator":
        assert {"kopf", "kubernetes-asyncio", "xds-protos", "cryptography"} <= names
    else:
        assert {"grpcio-health-checking", "prometheus-client", "pydantic-settings"} <= names


def test_dev_installs_every_extra() -> None:
    """`make` syncs the dev group alone; it must bring every mode (tests, demo, chart assets)."""
    extras: dict[str, list[str]] = pyproject()["project"]["optional-dependencies"]

    def reached(requirements: list[str]) -> set[str]:
        own = [r for r in requirements if r.startswith("grpcmesh[")]
        names = {n for r in own for n in r.removeprefix("grpcmesh[").rstrip("]").split(",")}
        return names.union(*(reached(extras[n]) for n in names))

    assert reached(pyproject()["dependency-groups"]["dev"]) == set(extras)


def test_runtime_copies_only_the_venv() -> None:
    for image, path in FILES.items():
        copies = final(path).all("COPY")
        assert [c.args for c in copies] == ["--from=builder /opt/venv /opt/venv"], image


def dockerignore() -> set[str]:
    path = REPO / ".dockerignore"
    assert path.is_file()
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {line for line in lines if line and not line.startswith("#")}


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = dockerignore()
    for entry in (".git", ".venv", ".tools", "gen", "tests", "**/__pycache__"):
        assert entry in ignored, entry
    # The builder needs these; hatchling reads README.md for the project's metadata.
    for needed in ("pyproject.toml", "uv.lock", "README.md", "services", "operator", "protos"):
        assert needed not in ignored, needed
