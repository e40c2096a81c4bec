"""grpcmesh service kit: the one way services on grpcmesh are served and call each other."""

from grpcmesh_kit.app import ServiceApp
from grpcmesh_kit.channels import ChannelFactory, UnknownService
from grpcmesh_kit.config import KitSettings, SettingsWatcher
from grpcmesh_kit.context import REQUEST_ID_HEADER, RpcContext, current_rpc, detached_context
from grpcmesh_kit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from grpcmesh_kit.logs import configure_logging
from grpcmesh_kit.pagetokens import PageTokens
from grpcmesh_kit.store import Store
from grpcmesh_kit.tracing import create_tracer_provider

__all__ = [
    "REQUEST_ID_HEADER",
    "Aborted",
    "AlreadyExists",
    "ChannelFactory",
    "FailedPrecondition",
    "InvalidArgument",
    "KitSettings",
    "NotFound",
    "PageTokens",
    "RpcContext",
    "ServiceApp",
    "ServiceError",
    "SettingsWatcher",
    "Store",
    "Unavailable",
    "UnknownService",
    "configure_logging",
    "create_tracer_provider",
    "current_rpc",
    "detached_context",
]
