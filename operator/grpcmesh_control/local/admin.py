"""Local mode's mutating endpoint, added to the xDS host's HTTP app (``runtime.host`` serves the
read-only ones). Bind it to 127.0.0.1: it changes the mesh.

==============================  ==============================================================
``POST /apply``                 body: YAML, header ``X-Filename``. Validates the union of the
                                current resources and the documents; 200 and
                                ``resources/<file>`` written, or 400 ``{"error": ...}`` naming
                                file, resource and field, and nothing changed.
``POST /delete``                body: JSON ``{"name": "<MeshService name>"}``. Removes the
                                file defining it if the rest stays valid (nothing calls it);
                                200, or 400 naming the service or its caller's field.
==============================  ==============================================================

Both need the mesh's credential (``local.credential``), as do the xDS host's ``/debug/*``.
"""

from __future__ import annotations

from aiohttp import web

from grpcmesh_control.host.xds_host import json_response
from grpcmesh_control.local.watcher import FileSources
from grpcmesh_control.mesh.errors import InvalidResourceSet
from grpcmesh_control.mesh.publisher import Publisher

__all__ = ["FILENAME_HEADER", "apply_route", "delete_route"]

FILENAME_HEADER = "X-Filename"


def apply_route(sources: FileSources, publisher: Publisher) -> web.RouteDef:
    async def apply(request: web.Request) -> web.Response:
        filename = request.headers.get(FILENAME_HEADER, "")
        if not filename:
            return json_response({"error": f"{FILENAME_HEADER}: header is missing"}, status=400)
        content = await request.read()
        try:
            plan = sources.apply(filename, content)
        except InvalidResourceSet as exc:
            return json_response(
                {"error": str(exc), "problems": [str(p) for p in exc.problems]}, status=400
            )
        return json_response(
            {
                "file": plan.filename,
                "applied": list(plan.applied),
                "removed": list(plan.removed),
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
