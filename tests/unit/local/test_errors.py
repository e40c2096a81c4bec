"""Every error local mode raises on purpose is a ``MeshError`` (the CLI's one ``except``)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import grpcmesh_control.local
from grpcmesh_control.mesh.errors import MeshError


def test_every_local_error_is_a_mesh_error() -> None:
    errors = {}
    for info in pkgutil.walk_packages(grpcmesh_control.local.__path__, "grpcmesh_control.local."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == module.__name__
            ):
                errors[f"{module.__name__}.{name}"] = value
    assert len(errors) >= 10, errors  # the walk found them
    assert [name for name, cls in errors.items() if not issubclass(cls, MeshError)] == []
