"""The kit's environment contract: the ``GRPCMESH_*`` variables the mesh gives every app.

One definition for both modes: local mode's plan (``local.plan``) and cluster mode's pod
template (``cluster.objects.pod``) build the app's variables with ``AppEnv.variables``, so a
variable added here reaches the app in both. Each name is ``GRPCMESH_`` plus a field of the
kit's ``KitSettings`` (a unit test holds the two together), so the app reads them as typed
settings without parsing anything itself; ``GRPCMESH_DB_PATH`` is the ``db_path`` setting of
the services that keep a ``Store``.

``RESERVED`` are the variables the mesh always sets: a workload (``spec.workload.env`` or a
version's ``env``) cannot move its own ports, config file, sidecar or version. The others
(``GRPCMESH_DB_PATH``, ``GRPCMESH_DRAIN_SECONDS``, ``GRPCMESH_OTLP_ENDPOINT``,
``GRPCMESH_TRACE_SAMPLING_RATIO``, ``GRPCMESH_WORKERS`` from ``spec.workload.workers``) are set
only where the mode has a value for them; where set, they win over the workload's own env.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CONFIG_FILE",
    "DB_PATH",
    "DRAIN_SECONDS",
    "HOST",
    "METRICS_HOST",
    "METRICS_PORT",
    "OTLP_ENDPOINT",
    "PORT",
    "PREFIX",
    "RESERVED",
    "SERVICE_NAME",
    "SIDECAR_ADMIN",
    "SIDECAR_EGRESS",
    "TRACE_SAMPLING_RATIO",
    "VERSION",
    "WORKERS",
    "XDS_BOOTSTRAP",
    "AppEnv",
]

PREFIX = "GRPCMESH_"
SERVICE_NAME = "GRPCMESH_SERVICE_NAME"
VERSION = "GRPCMESH_VERSION"
HOST = "GRPCMESH_HOST"
PORT = "GRPCMESH_PORT"
METRICS_HOST = "GRPCMESH_METRICS_HOST"
METRICS_PORT = "GRPCMESH_METRICS_PORT"
CONFIG_FILE = "GRPCMESH_CONFIG_FILE"
SIDECAR_EGRESS = "GRPCMESH_SIDECAR_EGRESS"
SIDECAR_ADMIN = "GRPCMESH_SIDECAR_ADMIN"
DB_PATH = "GRPCMESH_DB_PATH"
DRAIN_SECONDS = "GRPCMESH_DRAIN_SECONDS"
OTLP_ENDPOINT = "GRPCMESH_OTLP_ENDPOINT"
TRACE_SAMPLING_RATIO = "GRPCMESH_TRACE_SAMPLING_RATIO"
XDS_BOOTSTRAP = "GRPCMESH_XDS_BOOTSTRAP"
WORKERS = "GRPCMESH_WORKERS"

RESERVED = frozenset(
    {
        CONFIG_FILE,
        HOST,
        METRICS_HOST,
        METRICS_PORT,
        PORT,
        SERVICE_NAME,
        SIDECAR_ADMIN,
        SIDECAR_EGRESS,
        VERSION,
        XDS_BOOTSTRAP,
    }
)
"""Set by the mesh on every app, whatever the workload says (the CRD refuses them in env)."""


@dataclass(frozen=True)
class AppEnv:
    """What one replica of one version of a service is told. ``None`` leaves a variable unset
    (no sidecar: the kit dials directly; no path: the kit's default; no xDS bootstrap: the kit
    dials through its sidecar)."""

    service: str
    version: str
    host: str
    port: int
    metrics_host: str
    metrics_port: int
    config_file: str
    sidecar_egress: str | None = None
    sidecar_admin: str | None = None
    db_path: str | None = None
    drain_seconds: float | None = None
    otlp_endpoint: str | None = None
    trace_sampling_ratio: float | None = None
    """The mesh's one sampling ratio, which its Envoys use too."""
    xds_bootstrap: str | None = None
    """gRPC's xDS bootstrap (JSON) of a proxyless service's app (``spec.proxyless``,
    ``translate.proxyless.grpc_bootstrap``): its channels dial ``xds:///<backend>``."""
    workers: int | None = None
    """``spec.workload.workers``: processes per replica on one port."""

    def variables(self) -> dict[str, str]:
        """Name -> value, sorted by name (stable pod templates and plans)."""
        out = {
            SERVICE_NAME: self.service,
            VERSION: self.version,
            HOST: self.host,
            PORT: str(self.port),
            METRICS_HOST: self.metrics_host,
            METRICS_PORT: str(self.metrics_port),
            CONFIG_FILE: self.config_file,
        }
        optional = {
            SIDECAR_EGRESS: self.sidecar_egress,
            SIDECAR_ADMIN: self.sidecar_admin,
            XDS_BOOTSTRAP: self.xds_bootstrap,
            DB_PATH: self.db_path,
            DRAIN_SECONDS: None if self.drain_seconds is None else f"{self.drain_seconds:g}",
            OTLP_ENDPOINT: self.otlp_endpoint,
            TRACE_SAMPLING_RATIO: (
                None if self.trace_sampling_ratio is None else repr(self.trace_sampling_ratio)
            ),
            WORKERS: None if self.workers is None else str(self.workers),
        }
        out |= {name: value for name, value in optional.items() if value is not None}
        return dict(sorted(out.items()))
