"""Names, labels and annotations of the objects the operator writes: the conventions the
operator, the webhooks and the EndpointSlice source share.

Per MeshService ``<svc>`` (namespace of the resource):

==============================  ===============================================================
Service ``<svc>``               ClusterIP; port ``grpc`` -> the sidecar's inbound port; the
                                metrics ports Prometheus scrapes. No ``grpcmesh.io/version``.
Service ``<svc>-<version>``     Headless, one per version. Its EndpointSlices carry the
                                Service's labels (``grpcmesh.io/version`` included), so the
                                control plane learns each endpoint's version without watching
                                pods; App Mesh's DNS discovery resolves it per version too.
Deployment ``<svc>-<version>``  One per version, when spec.workload is set.
ConfigMap ``<svc>-config``      ``config.yaml`` = spec.config, mounted as a directory.
ConfigMap ``<svc>-envoy-bootstrap``  ``envoy.json``, the sidecar's bootstrap; with xDS
                                authentication, ``xds-root.pem`` too (the mesh root: Envoy's
                                gRPC default roots for the token exchange, and what a
                                proxyless app trusts for the control plane).
ServiceMonitor ``<svc>``        When the prometheus-operator CRD exists.
==============================  ===============================================================

``<svc>-<version>`` longer than a DNS label (63) is cut and suffixed with a hash, so it stays
valid and distinct.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ANNOTATION_BOOTSTRAP_HASH",
    "ANNOTATION_DEFAULT_CONTAINER",
    "APP_CONTAINER",
    "BOOTSTRAP_KEY",
    "BOOTSTRAP_VOLUME",
    "CONFIG_VOLUME",
    "DATA_VOLUME",
    "INJECT_VALUE",
    "LABEL_INJECT",
    "LABEL_SERVICE",
    "LABEL_VERSION",
    "MANAGED_BY",
    "PART_OF",
    "PROXY_CONTAINER",
    "TMP_VOLUME",
    "bootstrap_config_map_name",
    "config_map_name",
    "deployment_name",
    "dns_label",
    "service_labels",
    "version_labels",
    "version_selector",
    "version_service_name",
]

PART_OF = "grpcmesh"
MANAGED_BY = "grpcmesh-operator"
LABEL_SERVICE = "grpcmesh.io/service"
LABEL_VERSION = "grpcmesh.io/version"
LABEL_INJECT = "grpcmesh.io/inject"
INJECT_VALUE = "true"
ANNOTATION_BOOTSTRAP_HASH = "grpcmesh.io/bootstrap-hash"
# kubectl logs/exec pick this container without -c (the sidecar comes first in the pod).
ANNOTATION_DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"

PROXY_CONTAINER = "grpcmesh-proxy"
APP_CONTAINER = "app"
BOOTSTRAP_KEY = "envoy.json"
# Prefixed: the mutating webhook adds BOOTSTRAP_VOLUME to pods whose volumes are the user's.
BOOTSTRAP_VOLUME = "grpcmesh-bootstrap"
CONFIG_VOLUME = "grpcmesh-config"
TMP_VOLUME = "tmp"
DATA_VOLUME = "data"

_DNS_LABEL_MAX = 63
_HASH_CHARS = 10


def dns_label(text: str) -> str:
    """``text`` if it fits a DNS label, else its first characters plus a hash of all of it."""
    if len(text) <= _DNS_LABEL_MAX:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]
    head = text[: _DNS_LABEL_MAX - _HASH_CHARS - 1].rstrip("-")
    return f"{head}-{digest}"


def config_map_name(service: str) -> str:
    return f"{service}-config"


def bootstrap_config_map_name(service: str) -> str:
    return f"{service}-envoy-bootstrap"


def deployment_name(service: str, version: str) -> str:
    return dns_label(f"{service}-{version}")


def version_service_name(service: str, version: str) -> str:
    return dns_label(f"{service}-{version}")


def service_labels(service: str) -> dict[str, str]:
    """Labels of every object of one MeshService (the Kubernetes recommended set + ours)."""
    return {
        "app.kubernetes.io/instance": service,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": service,
        "app.kubernetes.io/part-of": PART_OF,
        LABEL_SERVICE: service,
    }


def version_labels(service: str, version: str) -> dict[str, str]:
    """Labels of one version's objects and pods."""
    labels = service_labels(service) | {
        "app.kubernetes.io/version": version,
        LABEL_VERSION: version,
    }
    return dict(sorted(labels.items()))


def version_selector(service: str, version: str) -> dict[str, str]:
    """A Deployment's selector (immutable): only what identifies the version's pods."""
    return {LABEL_SERVICE: service, LABEL_VERSION: version}
