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

from google.protobuf import descriptor_pb2

from grpcmesh_control.mesh.catalogs import ProtoSet, reference_protos
from grpcmesh_control.mesh.errors import FieldError, InvalidResource, InvalidResourceSet

__all__ = ["DESCRIPTOR_SUFFIX", "descriptor_set_name_error", "local_protos", "read_descriptor_sets"]

DESCRIPTOR_SUFFIX = ".binpb"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][-_.A-Za-z0-9]*$")
_MAX_NAME = 200


def descriptor_set_name_error(name: str) -> str | None:
    """Why ``name`` cannot be a descriptor set's file name in ``resources/``, else None."""
    if not name.endswith(DESCRIPTOR_SUFFIX):
        return f"a descriptor set's file name ends with {DESCRIPTOR_SUFFIX}"
    if len(name) > _MAX_NAME or not _FILE_NAME.match(name):
        return (
            f"a descriptor set's file name is at most {_MAX_NAME} letters, digits, '.', '-' "
            "and '_', not starting with '.', '-' or '_'"
        )
    return None


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
    ``InvalidResourceSet`` naming each set that is not a ``FileDescriptorSet``, that holds a
    proto file another set holds with other content, or whose files do not build with the
    rest (a symbol defined twice, an import no set holds). ``up``, ``apply`` and the control
    plane's poll of ``resources/`` all check protos here, so they refuse the same sets."""
    protos = reference_protos()
    problems: list[InvalidResource] = []
    origin: dict[str, tuple[str, descriptor_pb2.FileDescriptorProto]] = {}
    for name in sorted(sets):
        try:
            parsed = ProtoSet.parse(sets[name])
        except ValueError as exc:
            problems.append(_problem(where, name, str(exc)))
            continue
        for file in parsed.files:
            first = origin.setdefault(file.name, (name, file))
            if first[0] != name and _content(first[1]) != _content(file):
                problems.append(
                    _problem(
                        where,
                        name,
                        f"{file.name} differs from the one in {where}{first[0]}; build both "
                        "sets from the same .proto files",
                    )
                )
        protos = protos.merged(parsed)
    if not problems:
        inconsistent = protos.inconsistency()
        if inconsistent is not None:
            proto_file, reason = inconsistent
            owner = origin.get(proto_file)
            label = f"{where}{owner[0]}" if owner else "the reference protos"
            problems.append(InvalidResource(label, [FieldError("", f"{proto_file}: {reason}")]))
    if problems:
        raise InvalidResourceSet(problems)
    return protos


def _problem(where: str, name: str, message: str) -> InvalidResource:
    return InvalidResource(f"{where}{name}", [FieldError("", message)])


def _content(file: descriptor_pb2.FileDescriptorProto) -> bytes:
    """A proto file's definitions, without the source info some builds carry."""
    bare = descriptor_pb2.FileDescriptorProto()
    bare.CopyFrom(file)
    bare.ClearField("source_code_info")
    return bare.SerializeToString(deterministic=True)
