"""The kinds the operator writes, with what RBAC and pruning need to know about each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONFIG_MAP",
    "CUSTOM_RESOURCE_DEFINITION",
    "DEPLOYMENT",
    "ENDPOINT_SLICE",
    "MESH",
    "MUTATING_WEBHOOK_CONFIGURATION",
    "OWNED_KINDS",
    "SECRET",
    "SERVICE",
    "SERVICE_ACCOUNT",
    "SERVICE_MONITOR",
    "SERVICE_MONITOR_CRD",
    "TOKEN_REVIEW",
    "VALIDATING_WEBHOOK_CONFIGURATION",
    "VIRTUAL_NODE",
    "VIRTUAL_ROUTER",
    "VIRTUAL_SERVICE",
    "Kind",
    "kind_of",
    "object_key",
]


@dataclass(frozen=True)
class Kind:
    group: str
    """API group; "" is the core group."""
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


SERVICE = Kind("", "v1", "Service", "services")
CONFIG_MAP = Kind("", "v1", "ConfigMap", "configmaps")
SERVICE_ACCOUNT = Kind("", "v1", "ServiceAccount", "serviceaccounts")
DEPLOYMENT = Kind("apps", "v1", "Deployment", "deployments")
SERVICE_MONITOR = Kind("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors")
MESH = Kind("appmesh.k8s.aws", "v1beta2", "Mesh", "meshes", namespaced=False)
VIRTUAL_NODE = Kind("appmesh.k8s.aws", "v1beta2", "VirtualNode", "virtualnodes")
VIRTUAL_ROUTER = Kind("appmesh.k8s.aws", "v1beta2", "VirtualRouter", "virtualrouters")
VIRTUAL_SERVICE = Kind("appmesh.k8s.aws", "v1beta2", "VirtualService", "virtualservices")

OWNED_KINDS = (
    CONFIG_MAP,
    SERVICE_ACCOUNT,
    SERVICE,
    DEPLOYMENT,
    SERVICE_MONITOR,
    MESH,
    VIRTUAL_NODE,
    VIRTUAL_ROUTER,
    VIRTUAL_SERVICE,
)
"""Every kind ``desired_objects`` may return, in the order they are applied."""

# Not rendered per MeshService: the webhooks' TLS when the operator manages it
# (k8s.webhook_tls), in the operator's namespace and on the chart's webhook configurations.
SECRET = Kind("", "v1", "Secret", "secrets")
# Create only: who a sidecar's projected ServiceAccount token says it is (xDS authentication).
TOKEN_REVIEW = Kind("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", namespaced=False)
# Read only: the mesh's endpoints (the registry), and whether the cluster serves ServiceMonitors.
ENDPOINT_SLICE = Kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
CUSTOM_RESOURCE_DEFINITION = Kind(
    "apiextensions.k8s.io",
    "v1",
    "CustomResourceDefinition",
    "customresourcedefinitions",
    namespaced=False,
)
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
VALIDATING_WEBHOOK_CONFIGURATION = Kind(
    "admissionregistration.k8s.io",
    "v1",
    "ValidatingWebhookConfiguration",
    "validatingwebhookconfigurations",
    namespaced=False,
)
MUTATING_WEBHOOK_CONFIGURATION = Kind(
    "admissionregistration.k8s.io",
    "v1",
    "MutatingWebhookConfiguration",
    "mutatingwebhookconfigurations",
    namespaced=False,
)

_BY_TYPE = {(k.api_version, k.kind): k for k in OWNED_KINDS}


def kind_of(obj: Mapping[str, Any]) -> Kind:
    """The ``Kind`` of a rendered object; ``KeyError`` for a kind the operator does not own."""
    return _BY_TYPE[(obj["apiVersion"], obj["kind"])]


def object_key(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """``(apiVersion, kind, namespace, name)``: identity for diffing desired and actual."""
    metadata = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], metadata.get("namespace", ""), metadata["name"])
