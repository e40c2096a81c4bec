"""What the dashboards and alerts measure, defined once: metric names and what counts as an error.

Metric names are those the kit (``grpcmesh_kit.metrics``), the control plane
(``runtime.metrics``) and Envoy 1.40 (``/stats/prometheus``) export; the tests pin them against
the real exporters.
"""

from __future__ import annotations

from enum import StrEnum

from grpcmesh_control.mesh.translate.authorization import DENIED_STAT_PREFIX
from grpcmesh_control.observability import _promql as q
from grpcmesh_control.observability.scrape import Job, Label

__all__ = [
    "ENVOY_INTERNAL_CLUSTERS",
    "HANDSHAKE_FAILURES",
    "SERVER_FAULT_CODES",
    "ControlPlaneMetric",
    "EnvoyMetric",
    "KitMetric",
    "Side",
    "app",
    "control_plane",
    "envoy",
    "server_fault",
]


class Side(StrEnum):
    """Which side of a call the kit measured: the server handling it, or the client making it."""

    SERVER = "server"
    CLIENT = "client"


class KitMetric(StrEnum):
    """go-grpc-prometheus families, with ``{side}`` for ``server`` or ``client``."""

    STARTED = "grpc_{side}_started_total"
    HANDLED = "grpc_{side}_handled_total"
    MSG_RECEIVED = "grpc_{side}_msg_received_total"
    MSG_SENT = "grpc_{side}_msg_sent_total"
    HANDLING_SECONDS_BUCKET = "grpc_{side}_handling_seconds_bucket"
    HANDLING_SECONDS_COUNT = "grpc_{side}_handling_seconds_count"

    def of(self, side: Side) -> str:
        return self.value.format(side=side.value)


class ControlPlaneMetric(StrEnum):
    PUSHES = "grpcmesh_xds_pushes_total"
    ACKS = "grpcmesh_xds_acks_total"
    NACKS = "grpcmesh_xds_nacks_total"
    CONNECTED_PROXIES = "grpcmesh_xds_connected_proxies"
    REBUILDS = "grpcmesh_snapshot_rebuilds_total"
    REBUILD_ERRORS = "grpcmesh_snapshot_rebuild_errors_total"
    REBUILD_SECONDS_BUCKET = "grpcmesh_snapshot_rebuild_duration_seconds_bucket"
    SOURCE_PROBLEMS = "grpcmesh_source_problems"
    WORKLOAD_CERT_EXPIRY = "grpcmesh_workload_certificate_expiry_timestamp_seconds"
    """Per connected node (``node``, ``identity``): its certificate's notAfter, Unix seconds."""
    WORKLOAD_CERT_ISSUED = "grpcmesh_workload_certificate_issued_timestamp_seconds"
    """Per connected node: when its certificate was issued (expiry minus this: its lifetime)."""
    ROOTS_EXPIRY = "grpcmesh_mesh_roots_expiry_timestamp_seconds"
    """The earliest notAfter of the mesh roots and the CA's signing chain."""


class EnvoyMetric(StrEnum):
    """Envoy's names: its counters carry no ``_total`` suffix (``upstream_rq_total`` is a name)."""

    CONTROL_PLANE_CONNECTED = "envoy_control_plane_connected_state"
    UPSTREAM_RQ = "envoy_cluster_upstream_rq_total"
    UPSTREAM_RQ_XX = "envoy_cluster_upstream_rq_xx"
    UPSTREAM_RQ_TIMEOUT = "envoy_cluster_upstream_rq_timeout"
    UPSTREAM_RQ_PER_TRY_TIMEOUT = "envoy_cluster_upstream_rq_per_try_timeout"
    UPSTREAM_RQ_RETRY = "envoy_cluster_upstream_rq_retry"
    UPSTREAM_RQ_RETRY_SUCCESS = "envoy_cluster_upstream_rq_retry_success"
    UPSTREAM_RQ_RETRY_OVERFLOW = "envoy_cluster_upstream_rq_retry_overflow"
    UPSTREAM_RQ_PENDING_OVERFLOW = "envoy_cluster_upstream_rq_pending_overflow"
    UPSTREAM_RQ_TIME_BUCKET = "envoy_cluster_upstream_rq_time_bucket"
    """Milliseconds, unlike the kit's seconds."""
    EJECTIONS_ACTIVE = "envoy_cluster_outlier_detection_ejections_active"
    MEMBERSHIP_HEALTHY = "envoy_cluster_membership_healthy"
    MEMBERSHIP_TOTAL = "envoy_cluster_membership_total"
    RBAC_POLICY_SHADOW_DENIED = "envoy_http_rbac_policy_shadow_denied"
    """Per shadow policy; authorization's name one per caller and method it refuses."""
    LISTENER_SSL_HANDSHAKE = "envoy_listener_ssl_handshake"
    """TLS handshakes a listener completed (``envoy_listener_address``: its address_port)."""
    LISTENER_SSL_CONNECTION_ERROR = "envoy_listener_ssl_connection_error"
    """Connections that failed before or during the handshake: e.g. a plaintext caller."""
    LISTENER_SSL_NO_CERT = "envoy_listener_ssl_fail_verify_no_cert"
    """Callers that presented no client certificate (mTLS STRICT requires one)."""
    LISTENER_SSL_VERIFY_ERROR = "envoy_listener_ssl_fail_verify_error"
    """Client certificates that do not chain to the mesh roots (a foreign CA, expired)."""
    LISTENER_SSL_VERIFY_SAN = "envoy_listener_ssl_fail_verify_san"
    """Client certificates from the mesh CA whose SPIFFE ID is outside the trust domain."""


HANDSHAKE_FAILURES = (
    (EnvoyMetric.LISTENER_SSL_CONNECTION_ERROR, "connection error (plaintext caller?)"),
    (EnvoyMetric.LISTENER_SSL_NO_CERT, "no client certificate"),
    (EnvoyMetric.LISTENER_SSL_VERIFY_ERROR, "certificate not from the mesh CA"),
    (EnvoyMetric.LISTENER_SSL_VERIFY_SAN, "identity outside the trust domain"),
)
"""The inbound listeners' TLS handshake failures, each with what it means."""


ENVOY_INTERNAL_CLUSTERS = ("xds_cluster", "admin")
"""Clusters every bootstrap adds for the mesh's own plumbing (``bootstrap.XDS_CLUSTER``,
``bootstrap.ADMIN_CLUSTER``); upstream-health views leave them out."""

SERVER_FAULT_CODES = (
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
)
"""gRPC codes that spend the error budget: the server (or what it depends on) failed. Codes that
report the caller's mistake or a business outcome (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, ...) do not; neither does RESOURCE_EXHAUSTED, which is also a quota answer.
"""


def _camel(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_"))


def server_fault() -> q.Matcher:
    """``grpc_code`` is a server fault. The kit writes grpc-python's names (``UNAVAILABLE``);
    go-grpc-prometheus writes Go's (``Unavailable``): both match, so Go services count too."""
    spellings = (*SERVER_FAULT_CODES, *(_camel(c) for c in SERVER_FAULT_CODES))
    return q.regex("grpc_code", "|".join(spellings))


def app(metric: str, *matchers: q.Matcher) -> str:
    return q.selector(metric, q.eq("job", Job.APP), *matchers)


def envoy(metric: str, *matchers: q.Matcher) -> str:
    return q.selector(metric, q.eq("job", Job.ENVOY), *matchers)


def denied_calls(window: str) -> str:
    """Calls a sidecar refused under ``spec.authorization`` in ``window``, by the called
    ``service`` and the ``caller`` and ``method`` its policy names
    (``translate.authorization.denial_policy_name``)."""
    denied = q.increase(
        envoy(
            EnvoyMetric.RBAC_POLICY_SHADOW_DENIED,
            q.eq("envoy_rbac_http_prefix", DENIED_STAT_PREFIX.rstrip(".")),
        ),
        window,
    )
    policy = "envoy_rbac_policy_name"
    with_caller = q.label_from(denied, "caller", policy, "caller=(\\S+) method=.*")
    with_method = q.label_from(with_caller, "method", policy, "caller=\\S+ method=(.*)")
    return q.by("sum", (Label.SERVICE.value, "caller", "method"), with_method)


def control_plane(metric: str, *matchers: q.Matcher) -> str:
    return q.selector(metric, q.eq("job", Job.CONTROL_PLANE), *matchers)
