"""Local mode's mutating endpoint, added to the xDS host's HTTP app (``runtime.host`` serves the
read-only ones). Bind it to 127.0.0.1: it changes the mesh.

==============================  ==============================================================
``POST /apply``                 body: YAML, header ``X-Filename``. Validates the union of the
                                current resources and the documents; 200 and
                                ``resources/<file>`` written, or 400 ``{"error": ...}`` naming
                                file, resource and field, and nothing changed.
==============================  ==============================================================
"""

from __future__ import annotations

from aiohttp import web

from grpcmesh_control.host.xds_host import json_response
from grpcmesh_control.local.watcher import FileSources
from grpcmesh_control.mesh.errors import InvalidResourceSet
from grpcmesh_control.mesh.publisher import Publisher

__all__ = ["FILENAME_HEADER", "apply_route"]

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
