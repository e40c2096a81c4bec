"""``up --resources``: files and folders of MeshServices, read side by side."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from grpcmesh_control.local.resources import ResourcePathError, load_resources, read_resources
from tests.unit.local.conftest import EXAMPLES


def test_files_and_folders_are_read_together(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "notes.txt").write_text("not a resource")
    (extra / "sub").mkdir()  # subfolders are not read
    (extra / "sub" / "x.yaml").write_text("kind: Nothing")
    reviews = (EXAMPLES / "catalog.yaml").read_text().replace("name: catalog", "name: catalog2")
    (extra / "catalog2.yaml").write_text(reviews.replace("CatalogService]", "Catalog2Service]"))
    files, services = load_resources([EXAMPLES / "orders.yaml", EXAMPLES, extra])
    assert sorted(files) == [
        "catalog.yaml",
        "catalog2.yaml",
        "inventory.yaml",
        "orders.yaml",
        "payments.yaml",
    ]
    assert sorted(s.name for s in services) == [
        "catalog",
        "catalog2",
        "inventory",
        "orders",
        "payments",
    ]


def test_two_files_of_one_name_are_refused_naming_both(tmp_path: Path) -> None:
    other = tmp_path / "catalog.yaml"
    other.write_bytes((EXAMPLES / "catalog.yaml").read_bytes())
    with pytest.raises(ResourcePathError) as caught:
        read_resources([EXAMPLES, other])
    assert str(other) in str(caught.value)
    assert str(EXAMPLES / "catalog.yaml") in str(caught.value)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d / "missing", "no such file or folder"),
        (lambda d: d, "no MeshService resource files"),
        (lambda d: _write(d / "x.yml"), "not a MeshService file (*.yaml)"),
    ],
    ids=["missing", "empty-folder", "not-yaml"],
)
def test_paths_that_give_no_resource_are_refused(
    tmp_path: Path, make: Callable[[Path], Path], says: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(ResourcePathError) as caught:
        read_resources([path])
    assert str(caught.value).startswith(f"{path}: {says}")


def _write(path: Path) -> Path:
    path.write_text("{}")
    return path
