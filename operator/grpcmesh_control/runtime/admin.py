"""The control plane's admin HTTP API (aiohttp; bind it to 127.0.0.1: ``apply`` changes the mesh).

==============================  ==============================================================
``GET /healthz``                200 ``ok`` while the process serves.
``GET /status``                 the mesh as the control plane sees it (``status_document``).
``POST /apply``                 body: YAML, header ``X-Filename``. Validates the union of the
                                current resources and the documents; 200 and
                                ``resources/<file>`` written, or 400 ``{"error": ...}`` naming
                                file, resource and field, and nothing changed.
``GET /debug/snapshot?node=ID`` the node's current snapshot, resources as proto3 JSON.
``GET /metrics``                Prometheus text format (``runtime.metrics``).
==============================  ==============================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST

from grpcmesh_control.errors import InvalidResourceSet
from grpcmesh_control.runtime.metrics import ControlPlaneMetrics
from grpcmesh_control.runtime.publisher import Publisher
from grpcmesh_control.runtime.watcher import FileSources
from grpcmesh_control.sources import EndpointMap, ResourceSet
from grpcmesh_control.xds import NodeStatus, SnapshotCache, VersionedSnapshot

__all__ = ["FILENAME_HEADER", "AdminContext", "admin_app", "snapshot_document", "status_document"]

FILENAME_HEADER = "X-Filename"


@dataclass(frozen=True)
class AdminContext:
    """What the handlers read and act on (the control plane's parts)."""

    sources: FileSources
    publisher: Publisher
    cache: SnapshotCache
    metrics: ControlPlaneMetrics


def admin_app(context: AdminContext) -> web.Application:
    app = web.Application()
    handlers = _Handlers(context)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/status", handlers.status)
    app.router.add_post("/apply", handlers.apply)
    app.router.add_get("/debug/snapshot", handlers.snapshot)
    app.router.add_get("/metrics", handlers.metrics)
    return app


class _Handlers:
    def __init__(self, context: AdminContext) -> None:
        self.c = context

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def status(self, request: web.Request) -> web.Response:
        c = self.c
        document = status_document(
            version=c.publisher.version,
            resources=c.sources.resources,
            endpoints=c.sources.endpoints,
            problems=[*c.sources.problems, *c.publisher.problems()],
            nodes=c.cache.nodes(),
            snapshot_of=lambda node_id: c.cache.snapshot(c.cache.group_of(node_id)),
            node_problem=c.publisher.node_problem,
        )
        return _json(document)

    async def apply(self, request: web.Request) -> web.Response:
        filename = request.headers.get(FILENAME_HEADER, "")
        if not filename:
            return _json({"error": f"{FILENAME_HEADER}: header is missing"}, status=400)
        content = await request.read()
        try:
            plan = self.c.sources.apply(filename, content)
        except InvalidResourceSet as exc:
            return _json(
                {"error": str(exc), "problems": [str(p) for p in exc.problems]}, status=400
            )
        return _json(
            {
                "file": plan.filename,
                "applied": list(plan.applied),
                "removed": list(plan.removed),
                # The inputs version /status reports once the (debounced) rebuild has run.
                "version": self.c.publisher.inputs.version,
            }
        )

    async def snapshot(self, request: web.Request) -> web.Response:
        node_id = request.query.get("node", "")
        if not node_id:
            return _json({"error": "query parameter node is missing"}, status=400)
        snapshot = self.c.cache.snapshot(self.c.cache.group_of(node_id))
        if snapshot is None:
            return _json(
                {
                    "error": f"no snapshot for node {node_id}",
                    "problem": self.c.publisher.node_problem(node_id),
                },
                status=404,
            )
        return _json(snapshot_document(node_id, snapshot))

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.c.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def status_document(
    *,
    version: str | None,
    resources: ResourceSet,
    endpoints: EndpointMap,
    problems: list[str],
    nodes: list[NodeStatus],
    snapshot_of: Callable[[str], VersionedSnapshot | None],
    node_problem: Callable[[str], str | None],
) -> dict[str, Any]:
    """``GET /status`` (pure). ``version``: inputs of the published snapshots (None before the
    first rebuild). A node has converged when ``acked_version == snapshot_version``."""
    return {
        "version": version,
        "services": [
            {
                "name": entry.service.name,
                "namespace": entry.service.namespace,
                "file": entry.file,
                "expose": entry.service.expose,
                "versions": [{"name": v.name, "weight": v.weight} for v in entry.service.versions],
                "endpoints": {
                    "total": len(endpoints.get(entry.service.name, ())),
                    "ready": sum(1 for e in endpoints.get(entry.service.name, ()) if e.ready),
                },
            }
            for entry in resources.entries
        ],
        "problems": problems,
        "nodes": [_node(status, snapshot_of, node_problem) for status in nodes],
    }


def _node(
    status: NodeStatus,
    snapshot_of: Callable[[str], VersionedSnapshot | None],
    node_problem: Callable[[str], str | None],
) -> dict[str, Any]:
    snapshot = snapshot_of(status.node_id)
    nack = status.nack
    return {
        "id": status.node_id,
        "connected": status.connected,
        "connected_since": _timestamp(status.connected_since),
        "acked_version": status.acked_snapshot,
        "snapshot_version": None if snapshot is None else snapshot.version,
        "nack": None
        if nack is None
        else {
            "type_url": nack.type_url,
            "version": nack.version,
            "message": nack.message,
            "at": _timestamp(nack.at),
        },
        "problem": node_problem(status.node_id),
    }


def snapshot_document(node_id: str, snapshot: VersionedSnapshot) -> dict[str, Any]:
    """``GET /debug/snapshot``: per type URL, its version and resources as proto3 JSON."""
    return {
        "node": node_id,
        "version": snapshot.version,
        "resources": {
            type_url: {
                "version": typed.version,
                "resources": [MessageToDict(packed) for packed in typed.resources.values()],
            }
            for type_url, typed in snapshot.by_type.items()
        },
    }


def _timestamp(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _json(document: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(document, indent=2) + "\n", status=status, content_type="application/json"
    )
