"""``grpcmesh status --json``: the launcher's ``state.json`` merged with the control plane's
``/status`` (pure). The shape is a documented, stable contract (docs/local-mode.md): fields may
be added, never renamed or removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpcmesh_control.local.state import RunState

__all__ = ["status_document"]


def status_document(state: RunState, control_plane: Mapping[str, Any] | None) -> dict[str, Any]:
    """``control_plane`` is the admin API's /status document, or None if it did not answer
    (then every proxy field the control plane knows is null)."""
    nodes: dict[str, Mapping[str, Any]] = {}
    if control_plane is not None:
        nodes = {str(n.get("id")): n for n in control_plane.get("nodes", [])}
    services = []
    for name in state.services:
        endpoints = []
        for r in (r for r in state.replicas if r.service == name):
            endpoints.append(
                {
                    "address": r.app,
                    "metrics": r.metrics,
                    "sidecar_admin": r.sidecar_admin,
                    **_proxy(nodes.get(r.node_id)),
                    "version": r.version,
                    "replica": r.replica,
                    "node_id": r.node_id,
                    "inbound": r.sidecar_inbound,
                    "ready": r.ready,
                }
            )
        services.append({"name": name, "endpoints": endpoints})
    return {
        "ingress": state.ingress,
        "control_plane": state.control_plane_admin,
        "services": services,
        "control_plane_reachable": control_plane is not None,
        "config_version": None if control_plane is None else control_plane.get("version"),
        "problems": [] if control_plane is None else list(control_plane.get("problems", [])),
        "gateway": {
            "node_id": state.ingress_node_id,
            "admin": state.ingress_admin,
            **_proxy(nodes.get(state.ingress_node_id)),
        },
        "control_plane_xds": state.control_plane_xds,
        "control_plane_restarts": state.control_plane_restarts,
        "run_dir": state.run_dir,
        "prometheus": state.prometheus,
    }


def _proxy(node: Mapping[str, Any] | None) -> dict[str, Any]:
    node = node or {}
    nack = node.get("nack")
    return {
        "acked_version": node.get("acked_version"),
        "nack_error": nack.get("message") if isinstance(nack, Mapping) else None,
        "snapshot_version": node.get("snapshot_version"),
        "connected": bool(node.get("connected", False)),
    }
