"""Prometheus metrics with the go-grpc-prometheus names, server and client side.

Same names and labels as go-grpc-prometheus, so dashboards and alerts written for Go services
work unchanged. Each app owns a registry (several apps can share a test process).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

LABELS = ("grpc_type", "grpc_service", "grpc_method")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Finer at the low end than the Prometheus default: mesh calls are sub-millisecond to tens
of milliseconds, and the default's first bucket (5 ms) would hide the sidecar's cost."""


class GrpcType(enum.StrEnum):
    UNARY = "unary"
    CLIENT_STREAM = "client_stream"
    SERVER_STREAM = "server_stream"
    BIDI_STREAM = "bidi_stream"

    @classmethod
    def of(cls, request_streaming: bool, response_streaming: bool) -> GrpcType:
        if request_streaming and response_streaming:
            return cls.BIDI_STREAM
        if request_streaming:
            return cls.CLIENT_STREAM
        if response_streaming:
            return cls.SERVER_STREAM
        return cls.UNARY


GO_CODE_NAMES = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}
"""grpc_code label values as go-grpc-prometheus writes them (Go's codes.Code.String()), so
dashboards and alerts written for Go services match Python ones too."""


def go_code_name(status_name: str) -> str:
    """'UNAVAILABLE' (grpc.StatusCode name) -> 'Unavailable'."""
    return GO_CODE_NAMES.get(status_name, "Unknown")


def split_method(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


@dataclass(frozen=True)
class RpcMetrics:
    """The five go-grpc-prometheus families for one side (``server`` or ``client``)."""

    started: Counter
    handled: Counter
    msg_received: Counter
    msg_sent: Counter
    handling_seconds: Histogram

    @classmethod
    def create(cls, side: str, registry: CollectorRegistry) -> RpcMetrics:
        peer = "server" if side == "server" else "client"
        return cls(
            started=Counter(
                f"grpc_{side}_started",
                f"Total number of RPCs started on the {peer}.",
                LABELS,
                registry=registry,
            ),
            handled=Counter(
                f"grpc_{side}_handled",
                f"Total number of RPCs completed on the {peer}, regardless of success or failure.",
                (*LABELS, "grpc_code"),
                registry=registry,
            ),
            msg_received=Counter(
                f"grpc_{side}_msg_received",
                f"Total number of RPC stream messages received on the {peer}.",
                LABELS,
                registry=registry,
            ),
            msg_sent=Counter(
                f"grpc_{side}_msg_sent",
                f"Total number of gRPC stream messages sent by the {peer}.",
                LABELS,
                registry=registry,
            ),
            handling_seconds=Histogram(
                f"grpc_{side}_handling_seconds",
                f"Histogram of response latency (seconds) of gRPC that had been application-level "
                f"handled by the {peer}.",
                LABELS,
                registry=registry,
                buckets=LATENCY_BUCKETS,
            ),
        )


class HttpMetrics:
    """A registry's /metrics HTTP server, served on a background thread once started."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.server: WSGIServer | None = None
        self.thread: Thread | None = None

    def start(self, host: str, port: int) -> int:
        """Serve /metrics on a background thread; returns the bound port."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self.server, self.thread = server, thread
        return int(server.server_port)

    def stop(self) -> None:
        """Blocks up to the server's poll interval (0.5 s): call it off the event loop."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


class MetricsEndpoint(HttpMetrics):
    """The app's registry with the RPC families and, once started, its /metrics HTTP server.

    In a worker of a multi-worker app (``workers`` > 1) the values go to the parent's
    multiprocess directory instead, and the parent serves the one /metrics (see workers.py).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry or CollectorRegistry(auto_describe=True))
        # go-grpc-prometheus has no *_created series; keep the page identical in shape.
        disable_created_metrics()
        self.server_side = RpcMetrics.create("server", self.registry)
        self.client_side = RpcMetrics.create("client", self.registry)

    def labels(self, grpc_type: GrpcType, full_method: str) -> dict[str, Any]:
        service, method = split_method(full_method)
        return {"grpc_type": grpc_type.value, "grpc_service": service, "grpc_method": method}
