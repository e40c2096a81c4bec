"""Local mode's protos: descriptor sets (``*.binpb``) beside the MeshService files.

A user's service is known to the mesh by its ``FileDescriptorSet`` (``buf build -o
reviews.binpb``, or ``python -m grpc_tools.protoc --include_imports --descriptor_set_out=
reviews.binpb ...``): put it in the resources directory, or name it with ``grpcmesh up
--descriptors``, and its methods' ``idempotency_level`` drives retries, ``spec.methods`` names
are checked against it, and reflection at the ingress describes it. The reference domain's set
is always known (``mesh.catalogs.reference_protos``); a set given here replaces a file of the
same name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from grpcmesh_control.mesh.catalogs import ProtoSet, reference_protos
from grpcmesh_control.mesh.errors import FieldError, InvalidResource, InvalidResourceSet

__all__ = ["DESCRIPTOR_SUFFIX", "local_protos", "read_descriptor_sets"]

DESCRIPTOR_SUFFIX = ".binpb"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][-_.A-Za-z0-9]*$")


def read_descriptor_sets(*places: Path) -> dict[str, bytes]:
    """Every ``*.binpb`` directly in each directory of ``places``, and each file named, by
    file name (a later place wins for a name). A named file that does not exist raises
    ``FileNotFoundError``; a directory that does not exist holds nothing."""
    found: dict[str, bytes] = {}
    for place in places:
        if place.is_dir():
            for path in sorted(place.iterdir()):
                if path.suffix == DESCRIPTOR_SUFFIX and _FILE_NAME.match(path.name):
                    found[path.name] = path.read_bytes()
        elif place.suffix == DESCRIPTOR_SUFFIX or place.exists():
            found[place.name] = place.read_bytes()  # FileNotFoundError names the path
    return found


def local_protos(sets: Mapping[str, bytes], *, where: str = "") -> ProtoSet:
    """The reference protos plus every set in ``sets`` (in name order). Raises
    ``InvalidResourceSet`` naming each file that is not a ``FileDescriptorSet``."""
    protos = reference_protos()
    problems: list[InvalidResource] = []
    for name in sorted(sets):
        try:
            protos = protos.merged(ProtoSet.parse(sets[name]))
        except ValueError as exc:
            problems.append(InvalidResource(f"{where}{name}", [FieldError("", str(exc))]))
    if problems:
        raise InvalidResourceSet(problems)
    return protos
