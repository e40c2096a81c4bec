"""The operator process's settings: one frozen value, read from the environment once, at the edge.

``RuntimeSettings.from_env`` is the only place that reads ``GRPCMESH_*`` variables; everything
else receives the value. Rendering knobs live in ``k8s.settings.OperatorSettings`` (pure core).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from grpcmesh_control.cluster.objects.admission import MissingBackends
from grpcmesh_control.cluster.objects.settings import (
    AppMeshSettings,
    EgressFilter,
    OperatorSettings,
    PodLocalAddress,
    Provider,
    ProxySettings,
    TracingSettings,
)
from grpcmesh_control.mesh.ca import certificate_settings_from_env

__all__ = ["ApplyStrategy", "RuntimeSettings"]

FIELD_MANAGER = "grpcmesh-operator"
RANDOM_PRIORITY = "random"
_PRIORITY_RANGE = 1_000_000


class ApplyStrategy(StrEnum):
    """How owned objects are written."""

    SERVER_SIDE = "server-side"
    """Server-side apply (``application/apply-patch+yaml``, fieldManager ``grpcmesh-operator``,
    force): the API server merges by field ownership. The only choice for a real cluster."""
    CREATE_OR_MERGE = "create-or-merge"
    """POST, and on 409 a JSON merge patch. For API emulators without server-side apply (kmock
    in the benchmark); it cannot remove fields another writer added, so never use it in a
    cluster."""


@dataclass(frozen=True)
class RuntimeSettings:
    render: OperatorSettings = field(default_factory=OperatorSettings)
    apply_strategy: ApplyStrategy = ApplyStrategy.SERVER_SIDE
    field_manager: str = FIELD_MANAGER
    api_server: str | None = None
    """Explicit API URL, TLS unverified (tests against kmock). None: ``kubeconfig`` if set,
    else the in-cluster service account, else the kubeconfig ``KUBECONFIG`` names."""
    kubeconfig: Path | None = None
    """A kubeconfig file to use instead of the process's own (the in-cluster service account
    or ``KUBECONFIG``): embedding, and tests that run operators against a cluster of their
    own with credentials of their choice."""
    xds_host: str = "0.0.0.0"  # sidecars in other pods dial it
    xds_port: int = 18000
    """ADS gRPC port; 0 picks a free one (tests)."""
    metrics_host: str = "0.0.0.0"  # Prometheus scrapes it
    metrics_port: int | None = 9090
    """``/metrics`` port; None: not served; 0: a free one."""
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    """kopf's liveness probe URL (answers once kopf's watchers run); None: off."""
    webhook_port: int | None = None
    """HTTPS port of the admission webhooks; None: not served."""
    webhook_addr: str = "0.0.0.0"  # the API server calls it from outside the pod
    webhook_host: str | None = None
    """The hostname the API server uses (the webhook Service's DNS name)."""
    webhook_certfile: Path | None = None
    webhook_pkeyfile: Path | None = None
    """The serving certificate and key, mounted (cert-manager). Without them, the operator
    manages its own (``webhook_secret``)."""
    webhook_secret: str | None = None
    """Name of the TLS Secret in ``namespace`` that the operator creates, renews and serves
    from when no certificate files are given; its CA goes into the ``caBundle`` of
    ``webhook_configurations``."""
    webhook_configurations: tuple[str, ...] = ()
    """Names of the Validating and Mutating webhook configurations whose caBundle the
    operator keeps (the chart names both after the release)."""
    webhook_renew_interval: float = 12 * 3600.0
    """Seconds between checks of the operator's own webhook certificate (renewed 30 days
    before it expires; kopf's webhook server reloads the rewritten files by itself)."""
    namespace: str = "grpcmesh-system"
    """The operator's own namespace (from the downward API): where its Secrets live, and the
    gateway (the ingress identity's namespace)."""
    mesh_ca_secret: str | None = None
    """Name of the ``kubernetes.io/tls`` Secret in ``namespace`` holding the mesh CA
    (``cluster.objects.mesh_ca``): read at start, created with a self-signed root when
    missing, never rewritten (it may hold the user's own intermediate). With it, sidecars
    speak mTLS (STRICT unless a MeshService says PERMISSIVE) with workload certificates over
    SDS; None: plaintext, no CA."""
    gateway_tls_secret: str | None = None
    """Name of the ``kubernetes.io/tls`` Secret in ``namespace`` the ingress gateway serves
    TLS to outside clients with (``cluster.objects.gateway_tls``): read at start and every
    ``gateway_tls_refresh`` seconds, served to the gateway over SDS; None: plaintext."""
    gateway_client_certificates: bool = False
    """With ``gateway_tls_secret``: outside clients must present a certificate that chains to
    the Secret's ``ca.crt``."""
    gateway_tls_refresh: float = 30.0
    """Seconds between reads of ``gateway_tls_secret`` (a renewed certificate is served by
    then; only ``get`` on the one Secret is granted, no watch)."""
    xds_auth: bool = False
    """Serve ADS over TLS (a mesh-CA certificate for the host of ``render.xds_address``) to
    sidecars proving their ServiceAccount with a projected token (``xds_auth``), each only its
    own MeshService's configuration; needs ``mesh_ca_secret``. False: plaintext, open."""
    token_exchange_port: int = 18001
    """HTTP port of the RFC 8693 token exchange the sidecars' STS credentials call (with
    ``xds_auth``), on ``xds_host``; 0 picks a free one (tests)."""
    gateway_service_account: str | None = "grpcmesh-ingress"
    """The ServiceAccount (in ``namespace``) whose token may ask for ingress nodes; None: no
    gateway may connect."""
    xds_root_config_map: str | None = None
    """With ``xds_auth``: a ConfigMap in ``namespace`` the operator writes the mesh root to
    (``ca.crt``, public) at start, for Envoys whose bootstrap it does not render (the chart's
    gateway mounts it). None: none written."""
    xds_serving_names: tuple[str, ...] = ()
    """More names for the xDS serving certificate, besides the host of ``render.xds_address``
    (e.g. the Service's name with the cluster domain)."""
    missing_backends: MissingBackends = MissingBackends.WARN
    """What the validating webhook does with a backend that names no MeshService yet: warn
    (the default; resources may be applied in any order) or deny."""
    resync_interval: float = 60.0
    """Seconds between full re-reconciles of every MeshService (drift, lost events)."""
    consistency_timeout: float = 5.0
    """Seconds kopf waits to see its own patch come back in the watch before handling the
    object again (kopf's default). Emulators without resourceVersions (kmock) never deliver
    it, so there each wait runs out: benchmarks against them lower it."""
    stop_grace: float = 1.0
    """Seconds in-flight ADS streams get on shutdown."""
    status_debounce: float = 0.2
    """Seconds an endpoint or sidecar-ACK change waits before its MeshService's status is
    recomputed, so a burst (a rollout, every sidecar ACKing) costs one reconcile."""
    peering: str | None = None
    """kopf peering: the name of a ``ClusterKopfPeering`` shared by the replicas; only the
    highest-priority live one handles events. None: ``--standalone`` (local, dev)."""
    peering_priority: int = 0
    """This replica's kopf peering priority (higher wins; equal priorities all pause).
    ``GRPCMESH_PEERING_PRIORITY=random`` draws one per process, so replicas of one Deployment
    (same environment) differ and exactly one is active."""

    def __post_init__(self) -> None:
        if self.xds_auth and self.mesh_ca_secret is None:
            raise ValueError(
                "GRPCMESH_XDS_AUTH needs GRPCMESH_MESH_CA_SECRET: the xDS server's certificate "
                "comes from the mesh CA"
            )
        if self.webhook_port is None:
            return
        if (self.webhook_certfile is None) != (self.webhook_pkeyfile is None):
            raise ValueError("GRPCMESH_WEBHOOK_CERT and GRPCMESH_WEBHOOK_KEY go together")
        if self.webhook_certfile is None and (
            self.webhook_secret is None or self.webhook_host is None
        ):
            raise ValueError(
                "GRPCMESH_WEBHOOK_PORT without GRPCMESH_WEBHOOK_CERT/_KEY needs "
                "GRPCMESH_WEBHOOK_SECRET (where the operator keeps its own certificate) and "
                "GRPCMESH_WEBHOOK_HOST (the name the API server calls)"
            )

    @property
    def manages_webhook_tls(self) -> bool:
        """Whether the operator issues its own webhook certificate (no mounted files)."""
        return self.webhook_port is not None and self.webhook_certfile is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RuntimeSettings:
        """From ``GRPCMESH_*`` variables; unset ones keep their defaults."""
        defaults = cls()
        render = OperatorSettings(
            provider=Provider(environ.get("GRPCMESH_PROVIDER", Provider.NATIVE.value)),
            xds_address=environ.get("GRPCMESH_XDS_ADDRESS", defaults.render.xds_address),
            service_monitor_crd=_flag(environ.get("GRPCMESH_SERVICE_MONITOR"), False),
            cluster_domain=environ.get("GRPCMESH_CLUSTER_DOMAIN", defaults.render.cluster_domain),
            pod_local_address=PodLocalAddress(
                environ.get("GRPCMESH_POD_LOCAL_ADDRESS", defaults.render.pod_local_address)
            ),
            proxy=ProxySettings(
                image=environ.get("GRPCMESH_PROXY_IMAGE") or defaults.render.proxy.image
            ),
            identity=certificate_settings_from_env(environ),
            tracing=TracingSettings(
                otlp_endpoint=environ.get("GRPCMESH_OTLP_ENDPOINT") or None,
                sampling=float(
                    environ.get("GRPCMESH_TRACE_SAMPLING_RATIO") or defaults.render.tracing.sampling
                ),
            ),
            appmesh=AppMeshSettings(
                mesh_name=environ.get("GRPCMESH_APPMESH_MESH_NAME")
                or defaults.render.appmesh.mesh_name,
                egress_filter=EgressFilter(
                    environ.get(
                        "GRPCMESH_APPMESH_EGRESS_FILTER", defaults.render.appmesh.egress_filter
                    )
                ),
            ),
        )
        return cls(
            render=render,
            apply_strategy=ApplyStrategy(
                environ.get("GRPCMESH_APPLY_STRATEGY", defaults.apply_strategy.value)
            ),
            api_server=environ.get("GRPCMESH_API_SERVER") or None,
            xds_host=environ.get("GRPCMESH_XDS_HOST", defaults.xds_host),
            xds_port=int(environ.get("GRPCMESH_XDS_PORT", defaults.xds_port)),
            metrics_host=environ.get("GRPCMESH_METRICS_HOST") or defaults.metrics_host,
            metrics_port=_port(environ.get("GRPCMESH_METRICS_PORT"), defaults.metrics_port),
            liveness_endpoint=environ.get("GRPCMESH_LIVENESS", defaults.liveness_endpoint) or None,
            webhook_port=_port(environ.get("GRPCMESH_WEBHOOK_PORT"), defaults.webhook_port),
            webhook_host=environ.get("GRPCMESH_WEBHOOK_HOST") or None,
            webhook_certfile=_path(environ.get("GRPCMESH_WEBHOOK_CERT")),
            webhook_pkeyfile=_path(environ.get("GRPCMESH_WEBHOOK_KEY")),
            webhook_secret=environ.get("GRPCMESH_WEBHOOK_SECRET") or None,
            webhook_configurations=tuple(
                name.strip()
                for name in environ.get("GRPCMESH_WEBHOOK_CONFIGS", "").split(",")
                if name.strip()
            ),
            namespace=environ.get("GRPCMESH_NAMESPACE") or defaults.namespace,
            mesh_ca_secret=environ.get("GRPCMESH_MESH_CA_SECRET") or None,
            gateway_tls_secret=environ.get("GRPCMESH_GATEWAY_TLS_SECRET") or None,
            gateway_client_certificates=_flag(
                environ.get("GRPCMESH_GATEWAY_CLIENT_CERTIFICATES"), False
            ),
            xds_auth=_flag(environ.get("GRPCMESH_XDS_AUTH"), defaults.xds_auth),
            token_exchange_port=int(
                environ.get("GRPCMESH_TOKEN_EXCHANGE_PORT", defaults.token_exchange_port)
            ),
            gateway_service_account=environ.get(
                "GRPCMESH_GATEWAY_SERVICE_ACCOUNT", defaults.gateway_service_account or ""
            )
            or None,
            xds_root_config_map=environ.get("GRPCMESH_XDS_ROOT_CONFIG_MAP") or None,
            xds_serving_names=tuple(
                name.strip()
                for name in environ.get("GRPCMESH_XDS_SERVING_NAMES", "").split(",")
                if name.strip()
            ),
            missing_backends=MissingBackends(
                environ.get("GRPCMESH_MISSING_BACKENDS", defaults.missing_backends.value)
            ),
            resync_interval=float(environ.get("GRPCMESH_RESYNC_SECONDS", defaults.resync_interval)),
            peering=environ.get("GRPCMESH_PEERING") or None,
            peering_priority=_priority(environ.get("GRPCMESH_PEERING_PRIORITY")),
        )


def _flag(text: str | None, default: bool) -> bool:
    return default if text is None else text.strip().lower() in {"1", "true", "yes"}


def _priority(text: str | None) -> int:
    if text is None or not text.strip():
        return 0
    if text.strip() == RANDOM_PRIORITY:
        return 1 + secrets.randbelow(_PRIORITY_RANGE)
    return int(text)


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _port(text: str | None, default: int | None) -> int | None:
    if text is None:
        return default
    return None if text.strip() in {"", "off"} else int(text)
