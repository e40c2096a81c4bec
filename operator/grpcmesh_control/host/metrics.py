"""The control plane's Prometheus metrics, on a registry of its own (no process globals).

================================================  =========  ======================================
``grpcmesh_xds_pushes_total{type}``               counter    responses sent to Envoys
``grpcmesh_xds_acks_total{type}``                 counter    responses Envoys accepted
``grpcmesh_xds_nacks_total{type}``                counter    responses Envoys rejected
``grpcmesh_xds_connected_proxies``                gauge      Envoys with an open ADS stream
``grpcmesh_snapshot_rebuilds_total``              counter    rebuilds (successful or not)
``grpcmesh_snapshot_rebuild_errors_total``        counter    rebuilds that published nothing
``grpcmesh_snapshot_rebuild_duration_seconds``    histogram  time to build every node's snapshot
``grpcmesh_source_problems``                      gauge      invalid source files right now
``grpcmesh_workload_certificate_expiry_timestamp_seconds{node,identity}``
                                                  gauge      a connected node's certificate's
                                                             ``notAfter`` (Unix seconds)
``grpcmesh_workload_certificate_issued_timestamp_seconds{node,identity}``
                                                  gauge      when it was issued (its lifetime is
                                                             expiry - issued)
``grpcmesh_mesh_roots_expiry_timestamp_seconds``  gauge      the earliest ``notAfter`` of the mesh
                                                             roots and the CA's signing chain
================================================  =========  ======================================

``type`` is ``cluster``, ``endpoint``, ``listener``, ``route`` or ``other`` (bounded). The
certificate series exist only with a mesh CA (mTLS); a node's leave with its stream (they are
read from the certificates held at each scrape, so a disconnected node has none).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from grpcmesh_control.mesh.certificates import NodeCertificate
from grpcmesh_control.mesh.publisher import RebuildOutcome
from grpcmesh_control.mesh.xds import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Refusal,
    SnapshotCache,
)

__all__ = [
    "CERTIFICATE_EXPIRY",
    "CERTIFICATE_ISSUED",
    "ROOTS_EXPIRY",
    "ControlPlaneMetrics",
    "MeteredSnapshotCache",
    "XdsType",
]

CERTIFICATE_EXPIRY = "grpcmesh_workload_certificate_expiry_timestamp_seconds"
CERTIFICATE_ISSUED = "grpcmesh_workload_certificate_issued_timestamp_seconds"
ROOTS_EXPIRY = "grpcmesh_mesh_roots_expiry_timestamp_seconds"


class XdsType(StrEnum):
    """The ``type`` label: a short name per xDS type URL."""

    CLUSTER = "cluster"
    ENDPOINT = "endpoint"
    LISTENER = "listener"
    ROUTE = "route"
    SECRET = "secret"
    """SDS: a node's certificate and roots (pushed at issuance and at each renewal)."""
    OTHER = "other"

    @classmethod
    def of(cls, type_url: str) -> XdsType:
        return _TYPES.get(type_url, cls.OTHER)


_TYPES: dict[str, XdsType] = {
    CLUSTER: XdsType.CLUSTER,
    ENDPOINT: XdsType.ENDPOINT,
    LISTENER: XdsType.LISTENER,
    ROUTE: XdsType.ROUTE,
    SECRET: XdsType.SECRET,
}


class ControlPlaneMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.pushes = Counter(
            "grpcmesh_xds_pushes",
            "xDS responses sent to Envoys, by resource type.",
            ["type"],
            registry=self.registry,
        )
        self.acks = Counter(
            "grpcmesh_xds_acks",
            "xDS responses Envoys accepted (ACK), by resource type.",
            ["type"],
            registry=self.registry,
        )
        self.nacks = Counter(
            "grpcmesh_xds_nacks",
            "xDS responses Envoys rejected (NACK), by resource type.",
            ["type"],
            registry=self.registry,
        )
        self.connected = Gauge(
            "grpcmesh_xds_connected_proxies",
            "Envoys with at least one open ADS stream.",
            registry=self.registry,
        )
        self.rebuilds = Counter(
            "grpcmesh_snapshot_rebuilds",
            "Snapshot rebuilds, successful or not.",
            registry=self.registry,
        )
        self.rebuild_errors = Counter(
            "grpcmesh_snapshot_rebuild_errors",
            "Snapshot rebuilds that failed and published nothing (last good kept).",
            registry=self.registry,
        )
        self.rebuild_duration = Histogram(
            "grpcmesh_snapshot_rebuild_duration_seconds",
            "Time to build and publish every node's snapshot.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.source_problems = Gauge(
            "grpcmesh_source_problems",
            "Source files (resources, endpoints) that are invalid right now; the last valid "
            "content of each is in use.",
            registry=self.registry,
        )
        self.refusals = Counter(
            "grpcmesh_xds_refusals",
            "ADS streams refused: reason unauthenticated (no or a bad node credential) or "
            "wrong_node (a valid credential asking for another node's configuration).",
            ["reason"],
            registry=self.registry,
        )
        for reason in Refusal:
            self.refusals.labels(reason=reason.value)
        for label in XdsType:  # export zeros, so rate() works from the first scrape
            for counter in (self.pushes, self.acks, self.nacks):
                counter.labels(type=label.value)

    def observe(self, *, cache: SnapshotCache, source_problems: Callable[[], int]) -> None:
        """Compute the gauges from live state at each scrape."""
        self.connected.set_function(lambda: sum(1 for n in cache.nodes() if n.connected))
        self.source_problems.set_function(lambda: float(source_problems()))

    def observe_certificates(
        self,
        held: Callable[[], Iterable[NodeCertificate]],
        roots_not_after: Callable[[], dt.datetime],
    ) -> None:
        """Export the certificates ``held`` now and the roots' expiry at each scrape."""
        self.registry.register(_CertificateCollector(held, roots_not_after))

    def pushed(self, node_id: str, type_url: str) -> None:
        """``AdsServicer``'s ``on_push`` hook."""
        self.pushes.labels(type=XdsType.of(type_url).value).inc()

    def refused(self, reason: Refusal) -> None:
        """``AdsServicer``'s ``on_refused`` hook."""
        self.refusals.labels(reason=reason.value).inc()

    def rebuilt(self, outcome: RebuildOutcome) -> None:
        """``Publisher``'s ``on_rebuild`` hook."""
        self.rebuilds.inc()
        self.rebuild_duration.observe(outcome.duration)
        if not outcome.ok:
            self.rebuild_errors.inc()

    def exposition(self) -> bytes:
        """The text exposition format, for ``GET /metrics``."""
        return generate_latest(self.registry)


class MeteredSnapshotCache(SnapshotCache):
    """A ``SnapshotCache`` that counts ACKs and NACKs (the cache is where they are recorded)."""

    def __init__(self, metrics: ControlPlaneMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def record_ack(self, node_id: str, type_url: str, version: str, watched: set[str]) -> None:
        super().record_ack(node_id, type_url, version, watched)
        self.metrics.acks.labels(type=XdsType.of(type_url).value).inc()

    def record_nack(self, node_id: str, type_url: str, version: str, message: str) -> None:
        super().record_nack(node_id, type_url, version, message)
        self.metrics.nacks.labels(type=XdsType.of(type_url).value).inc()


class _CertificateCollector(Collector):
    def __init__(
        self,
        held: Callable[[], Iterable[NodeCertificate]],
        roots_not_after: Callable[[], dt.datetime],
    ) -> None:
        self._held = held
        self._roots_not_after = roots_not_after

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["node", "identity"]
        expiry = GaugeMetricFamily(
            CERTIFICATE_EXPIRY,
            "When a connected node's workload certificate expires (notAfter, Unix seconds).",
            labels=labels,
        )
        issued = GaugeMetricFamily(
            CERTIFICATE_ISSUED,
            "When the control plane issued a connected node's workload certificate (Unix "
            "seconds); expiry minus this is its lifetime.",
            labels=labels,
        )
        for cert in self._held():
            values = [cert.node_id, str(cert.identity)]
            expiry.add_metric(values, cert.not_after.timestamp())
            issued.add_metric(values, cert.issued_at.timestamp())
        yield expiry
        yield issued
        yield GaugeMetricFamily(
            ROOTS_EXPIRY,
            "The earliest expiry (notAfter, Unix seconds) of the mesh roots and the CA's "
            "signing chain: no workload certificate verifies past it.",
            value=self._roots_not_after().timestamp(),
        )
