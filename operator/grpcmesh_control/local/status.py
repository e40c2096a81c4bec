"""``grpcmesh status --json``: the launcher's ``state.json`` merged with the control plane's
``/status`` (pure). The shape is a documented, stable contract (docs/local-mode.md): fields may
be added, never renamed or removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from grpcmesh_control.local.state import RunState

__all__ = ["endpoint_problems", "status_document"]


def status_document(state: RunState, control_plane: Mapping[str, Any] | None) -> dict[str, Any]:
    """``control_plane`` is the admin API's /status document, or None if it did not answer
    (then every proxy field the control plane knows is null)."""
    nodes: dict[str, Mapping[str, Any]] = {}
    if control_plane is not None:
        nodes = {str(n.get("id")): n for n in control_plane.get("nodes", [])}
    services = []
    for name in state.services:
        endpoints = []
        replicas = [r for r in state.replicas if r.service == name]
        for r in replicas:
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
                    "restarts": {"app": r.app_restarts, "sidecar": r.sidecar_restarts},
                }
            )
        versions = [
            {
                "name": d.version,
                "weight": d.weight,
                "replicas": d.replicas,
                "ready": sum(1 for r in replicas if r.version == d.version and r.ready),
            }
            for d in state.declared
            if d.service == name
        ]
        services.append({"name": name, "endpoints": endpoints, "versions": versions})
    return {
        "ingress": state.ingress,
        "control_plane": state.control_plane_admin,
        "services": services,
        "control_plane_reachable": control_plane is not None,
        "config_version": None if control_plane is None else control_plane.get("version"),
        "problems": [
            *([] if control_plane is None else control_plane.get("problems", [])),
            *endpoint_problems(state),
        ],
        "gateway": {
            "node_id": state.ingress_node_id,
            "admin": state.ingress_admin,
            **_proxy(nodes.get(state.ingress_node_id)),
            "restarts": state.ingress_restarts,
        },
        "control_plane_xds": state.control_plane_xds,
        "control_plane_restarts": state.control_plane_restarts,
        "run_dir": state.run_dir,
        "prometheus": state.prometheus,
        "reconciled": None
        if state.reconciled is None
        else {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(state.reconciled).items()
        },
    }


def endpoint_problems(state: RunState) -> list[str]:
    """Every declared service or version that takes calls but has no ready endpoint."""
    problems = []
    for name in sorted({d.service for d in state.declared}):
        declared = [d for d in state.declared if d.service == name]
        label = f"MeshService {declared[0].namespace}/{name}"
        if not any(d.replicas for d in declared):
            problems.append(f"{label}: no endpoints (no spec.workload: nothing runs it locally)")
            continue
        ready = {r.version for r in state.replicas if r.service == name and r.ready}
        weighted = [d for d in declared if d.weight > 0]
        missing = [d for d in weighted if d.version not in ready]
        if missing and len(missing) == len(weighted):
            problems.append(f"{label}: no ready endpoint: calls to it fail")
            continue
        problems.extend(
            f"{label}: version {d.version} (weight {d.weight}) has no ready endpoint: "
            "its share goes to the other versions"
            for d in missing
        )
    return problems


def _proxy(node: Mapping[str, Any] | None) -> dict[str, Any]:
    node = node or {}
    nack = node.get("nack")
    return {
        "acked_version": node.get("acked_version"),
        "nack_error": nack.get("message") if isinstance(nack, Mapping) else None,
        "snapshot_version": node.get("snapshot_version"),
        "connected": bool(node.get("connected", False)),
        "secrets": node.get("secrets"),
        "identity": node.get("identity"),
        "certificate": node.get("certificate"),
    }
