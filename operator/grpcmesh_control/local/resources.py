"""Read and validate MeshService files and folders before anything starts, with the control
plane's own rules (``sources.files``), so ``grpcmesh up`` refuses exactly what ``/apply`` would,
with the same messages (file, resource, field)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from grpcmesh_control.local.sources.descriptors import local_protos, read_descriptor_sets
from grpcmesh_control.local.sources.files import (
    RESOURCE_SUFFIX,
    parse_resource_files,
    read_resource_files,
)
from grpcmesh_control.mesh.errors import MeshError
from grpcmesh_control.mesh.model import MeshService

__all__ = ["ResourcePathError", "load_resources", "read_resources"]


class ResourcePathError(MeshError):
    """A ``--resources`` path is missing, of the wrong kind, or collides with another."""


def read_resources(paths: Sequence[Path]) -> dict[str, bytes]:
    """The resource files of ``paths`` by file name: each folder's ``*.yaml`` files (not its
    subfolders), and each file given by name. The run directory keeps them side by side, so
    two with one name are refused, naming both."""
    if not paths:
        raise ResourcePathError("no resource files or folders given")
    files: dict[str, bytes] = {}
    origin: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            found = {name: path / name for name in read_resource_files(path)}
            if not found:
                raise ResourcePathError(f"{path}: no MeshService resource files (*.yaml)")
        elif path.is_file():
            if path.suffix != RESOURCE_SUFFIX:
                raise ResourcePathError(f"{path}: not a MeshService file (*{RESOURCE_SUFFIX})")
            found = {path.name: path}
        else:
            raise ResourcePathError(f"{path}: no such file or folder")
        for name, source in found.items():
            if name in origin and origin[name].resolve() != source.resolve():
                raise ResourcePathError(
                    f"{source}: a resource file named {name} is already given ({origin[name]}); "
                    "rename one of them"
                )
            origin[name] = source
            files[name] = source.read_bytes()
    return files


def load_resources(
    paths: Sequence[Path], descriptors: Iterable[Path] = ()
) -> tuple[Mapping[str, bytes], tuple[MeshService, ...]]:
    """The files of ``paths`` (``read_resources``) plus the descriptor sets (``*.binpb``) in
    its folders and in ``descriptors`` (files, or folders of them), by name, and the
    MeshServices the YAML files define, checked against the protos of those sets (and the
    reference ones).

    Raises ``InvalidResourceSet`` naming every bad document and field (or descriptor set),
    ``ResourcePathError`` for a path that gives no resource file.
    """
    files = read_resources(paths)
    sets = read_descriptor_sets(*(p for p in paths if p.is_dir()), *descriptors)
    protos = local_protos(sets)
    return {**files, **sets}, parse_resource_files(files, catalog=protos.catalog).services
