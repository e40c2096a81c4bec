"""Read and validate a directory of MeshService files before anything starts, with the
control plane's own rules (``sources.files``), so ``grpcmesh up`` refuses exactly what
``/apply`` would, with the same messages (file, resource, field)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from grpcmesh_control.local.sources.files import parse_resource_files, read_resource_files
from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.model import MeshService

__all__ = ["load_resource_dir"]


def load_resource_dir(directory: Path) -> tuple[Mapping[str, bytes], tuple[MeshService, ...]]:
    """Every ``*.yaml`` file in ``directory`` by name, and the MeshServices they define.

    Raises ``InvalidResourceSet`` naming every bad document and field, ``FileNotFoundError``
    when there is no such directory or no resource file in it.
    """
    files = read_resource_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory}: no MeshService resource files (*.yaml)")
    return files, parse_resource_files(files, catalog=load_catalog()).services
