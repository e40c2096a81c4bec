"""The operator's own Prometheus metrics, registered next to the control plane's
(``ControlPlaneMetrics.registry``), so one ``/metrics`` page serves both.

=================================================  =========  ===================================
``grpcmesh_operator_reconciles_total{result}``     counter    reconciles, ``ok`` or ``error``
``grpcmesh_operator_reconcile_duration_seconds``   histogram  time of one reconcile
``grpcmesh_operator_queue_latency_seconds``        histogram  trigger -> reconcile start (waiting
                                                              for the same service's previous one)
``grpcmesh_operator_objects_applied_total``        counter    owned objects written
``grpcmesh_operator_objects_pruned_total``         counter    owned objects deleted as unwanted
``grpcmesh_operator_apply_errors_total``           counter    owned objects that failed to write
``grpcmesh_operator_events_dropped_total``         counter    Kubernetes Events not posted (the
                                                              queue was full: the API is slow)
=================================================  =========  ===================================
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["OperatorMetrics", "ReconcileResult"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReconcileResult(StrEnum):
    OK = "ok"
    ERROR = "error"


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter(
            "grpcmesh_operator_reconciles",
            "MeshService reconciles, by result (error: an object failed to apply or the spec "
            "is invalid).",
            ["result"],
            registry=registry,
        )
        self.duration = Histogram(
            "grpcmesh_operator_reconcile_duration_seconds",
            "Time of one MeshService reconcile.",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.queue_latency = Histogram(
            "grpcmesh_operator_queue_latency_seconds",
            "Time from a reconcile's trigger to its start.",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.applied = Counter(
            "grpcmesh_operator_objects_applied", "Owned objects written.", registry=registry
        )
        self.pruned = Counter(
            "grpcmesh_operator_objects_pruned",
            "Owned objects deleted because no MeshService wants them any more.",
            registry=registry,
        )
        self.apply_errors = Counter(
            "grpcmesh_operator_apply_errors",
            "Owned objects the API refused to write.",
            registry=registry,
        )
        self.events_dropped = Counter(
            "grpcmesh_operator_events_dropped",
            "Kubernetes Events not posted because the queue was full (statuses are unaffected).",
            registry=registry,
        )
        for result in ReconcileResult:
            self.reconciles.labels(result=result.value)
