"""``FileSources``: the run directory read by content hash, last valid content kept, and apply
writing only after validation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from grpcmesh_control.local.watcher import FileSources
from grpcmesh_control.mesh.errors import InvalidResourceSet
from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog

from .conftest import FakeClock


class Changes:
    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], dict[str, tuple[Endpoint, ...]]]] = []

    def __call__(
        self, services: tuple[MeshService, ...], endpoints: Mapping[str, tuple[Endpoint, ...]]
    ) -> None:
        self.calls.append((tuple(s.name for s in services), dict(endpoints)))


@pytest.fixture
def state_dir(tmp_path: Path, example_files: dict[str, bytes]) -> Path:
    resources = tmp_path / "resources"
    resources.mkdir()
    for name, content in example_files.items():
        (resources / name).write_bytes(content)
    return tmp_path


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def sources(state_dir: Path, changes: Changes, catalog: MethodCatalog) -> FileSources:
    return FileSources(state_dir, changes, catalog=catalog)


def write_endpoints(state_dir: Path, *ports: int, ready: bool = True) -> None:
    items = [
        {"service": "payments", "address": "127.0.0.1", "port": p, "ready": ready} for p in ports
    ]
    (state_dir / "endpoints.json").write_text(json.dumps({"endpoints": items}))


def snapshot_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_first_load_then_only_changes(
    sources: FileSources, state_dir: Path, changes: Changes
) -> None:
    assert sources.reload()
    assert changes.calls == [(("catalog", "inventory", "orders", "payments"), {})]
    assert not sources.reload()  # nothing changed on disk
    write_endpoints(state_dir, 41001)
    assert sources.reload()
    assert changes.calls[-1][1] == {"payments": (Endpoint("127.0.0.1", 41001, "v1"),)}
    # Same content, rewritten: no change.
    write_endpoints(state_dir, 41001)
    assert not sources.reload()
    assert len(changes.calls) == 2


def test_an_invalid_edit_keeps_the_last_valid_resources(
    sources: FileSources, state_dir: Path, changes: Changes
) -> None:
    sources.reload()
    payments = state_dir / "resources" / "payments.yaml"
    valid = payments.read_bytes()
    payments.write_bytes(valid.replace(b"weight: 10", b"weight: 20"))
    assert not sources.reload()
    assert sources.problems == [
        "resources/payments.yaml (MeshService default/payments): spec.versions: "
        "weights sum to 110, must be 100"
    ]
    assert [s.name for s in sources.resources.services][-1] == "payments"
    assert len(changes.calls) == 1

    payments.write_bytes(valid.replace(b"weight: 90", b"weight: 80").replace(b": 10", b": 20"))
    assert sources.reload()
    assert sources.problems == []
    weights = [v.weight for v in sources.resources.services[-1].versions]
    assert weights == [80, 20]


def test_an_invalid_endpoints_file_keeps_the_last_valid_endpoints(
    sources: FileSources, state_dir: Path
) -> None:
    write_endpoints(state_dir, 41001)
    sources.reload()
    (state_dir / "endpoints.json").write_text('{"endpoints": [{"service": "payments"}]}')
    assert not sources.reload()
    assert sources.problems == [
        "endpoints.json: endpoints[0].address: required field is missing; "
        "endpoints[0].port: required field is missing"
    ]
    assert sources.endpoints == {"payments": (Endpoint("127.0.0.1", 41001, "v1"),)}


def test_a_deleted_endpoints_file_means_no_endpoints(sources: FileSources, state_dir: Path) -> None:
    write_endpoints(state_dir, 41001)
    sources.reload()
    (state_dir / "endpoints.json").unlink()
    assert sources.reload()
    assert sources.endpoints == {}


async def test_watch_polls_on_the_clock(
    sources: FileSources, state_dir: Path, changes: Changes, clock: FakeClock
) -> None:
    polls: list[float] = []

    def on_sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 2:
            write_endpoints(state_dir, 41001)
        if len(polls) == 4:
            raise _Stop

    clock.on_sleep = on_sleep
    with pytest.raises(_Stop):
        await sources.watch(clock, 0.1)
    assert polls == [0.1] * 4
    assert [bool(endpoints) for _, endpoints in changes.calls] == [False, True]


class _Stop(Exception):
    pass


def test_apply_writes_the_file_and_reloads(
    sources: FileSources, state_dir: Path, changes: Changes, example_files: dict[str, bytes]
) -> None:
    sources.reload()
    content = example_files["payments.yaml"].replace(b"weight: 90", b"weight: 50")
    content = content.replace(b"weight: 10", b"weight: 50")
    plan = sources.write(sources.plan("payments-canary.yaml", content))
    resources = state_dir / "resources"
    assert plan.removed == ("payments.yaml",)
    assert sorted(p.name for p in resources.iterdir()) == [
        "catalog.yaml",
        "inventory.yaml",
        "orders.yaml",
        "payments-canary.yaml",  # no temporary file left behind
    ]
    assert (resources / "payments-canary.yaml").read_bytes() == content
    assert sources.resources.file_of("default/payments") == "payments-canary.yaml"
    assert len(changes.calls) == 2  # picked up at once, not at the next poll


def test_a_refused_apply_changes_nothing(
    sources: FileSources, state_dir: Path, changes: Changes, example_files: dict[str, bytes]
) -> None:
    sources.reload()
    before = snapshot_of(state_dir / "resources")
    bad = example_files["payments.yaml"].replace(b"weight: 10", b"weight: 20")
    with pytest.raises(InvalidResourceSet, match=r"payments\.yaml .* weights sum to 110"):
        sources.plan("payments.yaml", bad)
    assert snapshot_of(state_dir / "resources") == before
    assert len(changes.calls) == 1


def test_apply_creates_the_resources_directory(tmp_path: Path, catalog: MethodCatalog) -> None:
    sources = FileSources(tmp_path, Changes(), catalog=catalog)
    echo = b"""
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {name: echo}
spec:
  grpc: {port: 9000, services: [test.v1.Echo]}
"""
    sources.write(sources.plan("echo.yaml", echo))
    assert [s.name for s in sources.resources.services] == ["echo"]
