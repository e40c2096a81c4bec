"""``grpcmesh status --cluster``: the mesh in a cluster as ``istioctl proxy-status`` shows it.

Two sources, both through the API server so that RBAC guards them: the API (MeshServices and
their status, the pods that serve them) and the operator's ``/status`` (which config every
connected sidecar has ACKed or NACKed), read through the API server's service proxy
(``services/proxy`` on the operator's ``metrics`` port). ``cluster_status_document`` is pure;
``fetch`` is the edge, with the official ``kubernetes`` client honouring kubeconfig contexts.

The document has the local mode's shape where the two agree (``services[].endpoints[]`` with
``replica``, ``address``, ``ready``, ``connected``, ``acked_version``, ``nack_error``), so one
table renders both; documented in docs/operator.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpcmesh_control.cluster.objects.names import LABEL_SERVICE, LABEL_VERSION
from grpcmesh_control.mesh.errors import InvalidNodeId, MeshError
from grpcmesh_control.mesh.translate.naming import NodeId, NodeKind

__all__ = [
    "ClusterStatusError",
    "ClusterTarget",
    "Snapshot",
    "cluster_status_document",
    "fetch",
]

GROUP, VERSION, PLURAL = "grpcmesh.io", "v1alpha1", "meshservices"
TIMEOUT_S = 10.0

Obj = Mapping[str, Any]


class ClusterStatusError(MeshError):
    """The API could not be read at all (no kubeconfig, unknown context, refused)."""


@dataclass(frozen=True)
class ClusterTarget:
    """Where to look: ``context`` None = the kubeconfig's current context; ``namespace`` None =
    every namespace the caller may list."""

    context: str | None
    namespace: str | None
    operator_namespace: str
    operator_service: str
    operator_port: str = "metrics"


@dataclass(frozen=True)
class Snapshot:
    """What ``fetch`` read; ``operator`` None when the service proxy did not answer, with
    ``operator_error`` saying why."""

    context: str
    meshservices: Sequence[Obj]
    pods: Sequence[Obj]
    operator: Mapping[str, Any] | None
    operator_error: str | None


def cluster_status_document(target: ClusterTarget, snap: Snapshot) -> dict[str, Any]:
    """Every MeshService, its pods as endpoints with their sidecar's xDS state, the gateway's
    proxies, and every problem (the operator's and the Degraded/not-Ready conditions)."""
    nodes: dict[str, Mapping[str, Any]] = {}
    problems: list[str] = []
    if snap.operator is not None:
        nodes = {str(n.get("id")): n for n in snap.operator.get("nodes", [])}
        problems.extend(str(p) for p in snap.operator.get("problems", []))
    else:
        problems.append(f"operator status unavailable: {snap.operator_error}")
    services = []
    for ms in sorted(snap.meshservices, key=_key):
        meta, spec = ms.get("metadata", {}), ms.get("spec", {})
        name, namespace = str(meta.get("name")), str(meta.get("namespace"))
        conditions = {c.get("type"): c for c in ms.get("status", {}).get("conditions", [])}
        ready = conditions.get("Ready", {})
        degraded = conditions.get("Degraded", {})
        if ready.get("status") != "True":
            problems.append(
                f"{namespace}/{name} not Ready ({ready.get('reason', 'no status yet')}): "
                f"{ready.get('message', '')}".rstrip(": ")
            )
        if degraded.get("status") == "True":
            problems.append(f"{namespace}/{name} Degraded ({degraded.get('reason')})")
        port = spec.get("grpc", {}).get("port")
        endpoints = [
            _endpoint(pod, port, nodes)
            for pod in sorted(snap.pods, key=_key)
            if pod.get("metadata", {}).get("namespace") == namespace
            and pod.get("metadata", {}).get("labels", {}).get(LABEL_SERVICE) == name
        ]
        if not endpoints:
            problems.append(f"{namespace}/{name} has no pods")
        services.append(
            {
                "name": name,
                "namespace": namespace,
                "ready": ready.get("status", "Unknown"),
                "reason": ready.get("reason"),
                "acked_version": ms.get("status", {}).get("ackedVersion"),
                "versions": [
                    {"name": v.get("name"), "weight": v.get("weight")}
                    for v in spec.get("versions", [])
                ],
                "endpoints": endpoints,
            }
        )
    gateway_nodes = [n for node_id, n in sorted(nodes.items()) if _is_ingress(node_id)]
    return {
        "mode": "cluster",
        "context": snap.context,
        "ingress": f"{target.operator_namespace} gateway",
        "control_plane": f"{target.operator_namespace}/{target.operator_service}",
        "control_plane_reachable": snap.operator is not None,
        "config_version": None if snap.operator is None else snap.operator.get("version"),
        "services": services,
        "gateways": [{"node_id": n.get("id"), **_proxy(n)} for n in gateway_nodes],
        "problems": problems,
    }


def _endpoint(pod: Obj, port: Any, nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    meta, status = pod.get("metadata", {}), pod.get("status", {})
    service = str(meta.get("labels", {}).get(LABEL_SERVICE))
    try:
        node_id: str | None = str(NodeId.sidecar(service, str(meta.get("name"))))
    except InvalidNodeId:  # a pod the operator did not render; it has no sidecar of ours
        node_id = None
    ip = status.get("podIP")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    return {
        "replica": meta.get("name"),
        "address": f"{ip}:{port}" if ip and port else (ip or ""),
        "version": meta.get("labels", {}).get(LABEL_VERSION),
        "phase": status.get("phase"),
        "ready": ready,
        "node_id": node_id,
        **_proxy(nodes.get(node_id) if node_id else None),
    }


def _proxy(node: Mapping[str, Any] | None) -> dict[str, Any]:
    node = node or {}
    nack = node.get("nack")
    return {
        "connected": bool(node.get("connected", False)),
        "acked_version": node.get("acked_version"),
        "snapshot_version": node.get("snapshot_version"),
        "nack_error": nack.get("message") if isinstance(nack, Mapping) else None,
        "identity": node.get("identity"),
        "certificate": node.get("certificate"),
    }


def _is_ingress(node_id: str) -> bool:
    try:
        return NodeId.parse(node_id).kind is NodeKind.INGRESS
    except InvalidNodeId:
        return False


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return str(meta.get("namespace")), str(meta.get("name"))


def fetch(target: ClusterTarget) -> Snapshot:
    """Read the API and the operator's /status (the edge). Raises ClusterStatusError when the
    API cannot be read; an unreachable operator is reported in the snapshot instead."""
    try:
        from kubernetes import client, config
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ModuleNotFoundError as missing:
        raise ClusterStatusError(
            f"{missing.name} is not installed: pip install 'grpcmesh[cluster]'"
        ) from missing
    kubeconfig: Any = config  # its loaders are untyped
    try:
        api_client = kubeconfig.new_client_from_config(context=target.context)
        _, current = kubeconfig.list_kube_config_contexts()
    except (ConfigException, OSError) as error:
        raise ClusterStatusError(f"kubeconfig: {error}") from error
    context = target.context or str(current.get("name"))
    with api_client:
        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        selector = LABEL_SERVICE
        meshservices: Any
        pods: Any  # raw (``_preload_content=False``): the JSON as the API sent it
        try:
            if target.namespace is None:
                meshservices = custom.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _request_timeout=TIMEOUT_S
                )
                pods = core.list_pod_for_all_namespaces(
                    label_selector=selector, _request_timeout=TIMEOUT_S, _preload_content=False
                )
            else:
                meshservices = custom.list_namespaced_custom_object(
                    GROUP, VERSION, target.namespace, PLURAL, _request_timeout=TIMEOUT_S
                )
                pods = core.list_namespaced_pod(
                    target.namespace,
                    label_selector=selector,
                    _request_timeout=TIMEOUT_S,
                    _preload_content=False,
                )
        except ApiException as error:
            raise ClusterStatusError(_api_reason(error)) from error
        except OSError as error:  # urllib3's connection errors are OSErrors
            raise ClusterStatusError(f"API server unreachable: {error}") from error
        operator, operator_error = _operator_status(core, target, ApiException)
    return Snapshot(
        context=context,
        meshservices=list(meshservices.get("items", [])),
        pods=list(json.loads(pods.data).get("items", [])),
        operator=operator,
        operator_error=operator_error,
    )


def _operator_status(
    core: Any, target: ClusterTarget, api_exception: type[Exception]
) -> tuple[Mapping[str, Any] | None, str | None]:
    proxied = f"http:{target.operator_service}:{target.operator_port}"
    try:
        response = core.connect_get_namespaced_service_proxy_with_path(
            proxied,
            target.operator_namespace,
            "status",
            _request_timeout=TIMEOUT_S,
            _preload_content=False,
        )
        document = json.loads(response.data)
    except api_exception as error:
        where = f"services/{proxied}/proxy/status in {target.operator_namespace}"
        return None, f"{where}: {_api_reason(error)}"
    except (OSError, ValueError) as error:
        return None, f"operator /status: {error}"
    if not isinstance(document, Mapping):
        return None, "operator /status did not return a JSON object"
    return document, None


def _api_reason(error: Any) -> str:
    """The API's own message (a Status object's ``message``), not the client's dump."""
    try:
        body = json.loads(error.body)
        message = body.get("message") if isinstance(body, Mapping) else None
    except (TypeError, ValueError):
        message = error.body.decode() if isinstance(error.body, bytes) else error.body
    return f"{error.status} {error.reason}: {message or ''}".strip()
