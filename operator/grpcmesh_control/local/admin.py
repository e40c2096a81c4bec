"""Local mode's mutating endpoint, added to the xDS host's HTTP app (``runtime.host`` serves the
read-only ones). Bind it to 127.0.0.1: it changes the mesh.

==============================  ==============================================================
``POST /apply``                 body: YAML, header ``X-Filename``; or ``multipart/form-data``
                                with one part ``resource`` (the YAML, its file name as the
                                part's filename) and any number of parts ``descriptors``
                                (descriptor sets, ``*.binpb``, by filename). Validates the
                                sets with the mesh's protos and the union of the current
                                resources and the documents against them; 200 and the sets
                                and ``resources/<file>`` written, or 400 ``{"error": ...}``
                                naming file, resource and field, and nothing changed.
``POST /delete``                body: JSON ``{"name": "<MeshService name>"}``. Removes the
                                file defining it if the rest stays valid (nothing calls it);
                                200, or 400 naming the service or its caller's field.
==============================  ==============================================================

Both need the mesh's credential (``local.credential``), as do the xDS host's ``/debug/*``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web

from grpcmesh_control.host.xds_host import json_response
from grpcmesh_control.local.sources import ApplyPlan
from grpcmesh_control.local.watcher import FileSources
from grpcmesh_control.mesh.errors import InvalidResourceSet, MeshError
from grpcmesh_control.mesh.publisher import Publisher

__all__ = [
    "DESCRIPTORS_PART",
    "FILENAME_HEADER",
    "RESOURCE_PART",
    "Apply",
    "apply_route",
    "delete_route",
]

FILENAME_HEADER = "X-Filename"
RESOURCE_PART = "resource"
DESCRIPTORS_PART = "descriptors"

Apply = Callable[[str, bytes, Mapping[str, bytes]], ApplyPlan]
"""``ControlPlane.apply``: file name, YAML, descriptor sets by file name."""


class _BadRequest(MeshError):
    """An ``/apply`` request of the wrong form (400)."""


async def _read_apply(request: web.Request) -> tuple[str, bytes, dict[str, bytes]]:
    """File name, YAML and descriptor sets of an ``/apply`` request, in either form."""
    if request.content_type != "multipart/form-data":
        filename = request.headers.get(FILENAME_HEADER, "")
        if not filename:
            raise _BadRequest(f"{FILENAME_HEADER}: header is missing")
        return filename, await request.read(), {}
    form = await request.post()  # within the app's body size limit, like read()
    resource: tuple[str, bytes] | None = None
    descriptors: dict[str, bytes] = {}
    for name, value in form.items():
        if not isinstance(value, web.FileField):
            raise _BadRequest(f"{name}: expected a file part (with a filename)")
        data = value.file.read()
        if name == RESOURCE_PART and resource is None:
            resource = (value.filename, data)
        elif name == DESCRIPTORS_PART and value.filename not in descriptors:
            descriptors[value.filename] = data
        elif name in (RESOURCE_PART, DESCRIPTORS_PART):
            raise _BadRequest(f"{name}: {value.filename} is given twice")
        else:
            raise _BadRequest(
                f"{name}: unknown part (expected {RESOURCE_PART} and {DESCRIPTORS_PART})"
            )
    if resource is None:
        raise _BadRequest(f"{RESOURCE_PART}: part is missing")
    return resource[0], resource[1], descriptors


def apply_route(apply_files: Apply, publisher: Publisher) -> web.RouteDef:
    async def apply(request: web.Request) -> web.Response:
        try:
            filename, content, descriptors = await _read_apply(request)
        except _BadRequest as exc:
            return json_response({"error": str(exc)}, status=400)
        try:
            plan = apply_files(filename, content, descriptors)
        except InvalidResourceSet as exc:
            return json_response(
                {"error": str(exc), "problems": [str(p) for p in exc.problems]}, status=400
            )
        return json_response(
            {
                "file": plan.filename,
                "applied": list(plan.applied),
                "removed": list(plan.removed),
                "descriptors": sorted(descriptors),
                # The inputs version /status reports once the (debounced) rebuild has run.
                "version": publisher.inputs.version,
            }
        )

    return web.post("/apply", apply)


def delete_route(sources: FileSources, publisher: Publisher) -> web.RouteDef:
    async def delete(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return json_response({"error": 'body: expected JSON {"name": "<service>"}'}, status=400)
        try:
            plan = sources.delete(name)
        except InvalidResourceSet as exc:
            return json_response(
                {"error": str(exc), "problems": [str(p) for p in exc.problems]}, status=400
            )
        return json_response(
            {"deleted": name, "removed": list(plan.removed), "version": publisher.inputs.version}
        )

    return web.post("/delete", delete)
