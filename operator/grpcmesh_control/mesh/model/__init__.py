"""The mesh's domain model: parsed MeshServices, endpoints and the method catalog. No I/O
besides reading the CRD schema file once; imports neither kopf nor grpc."""

from grpcmesh_control.mesh.errors import FieldError, InvalidResource
from grpcmesh_control.mesh.model.catalog import Idempotency, MethodCatalog, MethodInfo, ServiceInfo
from grpcmesh_control.mesh.model.durations import format_duration, parse_duration
from grpcmesh_control.mesh.model.mesh import (
    Backend,
    CircuitBreaker,
    Endpoint,
    EnvVar,
    ExternalHost,
    GrpcSpec,
    KeyRef,
    LoadBalancer,
    MeshService,
    MethodPolicy,
    OutlierDetection,
    ResourceList,
    Resources,
    RetryBudget,
    RetryOn,
    RetryOverride,
    RetryPolicy,
    TrafficPolicy,
    VersionTarget,
    Workload,
)
from grpcmesh_control.mesh.model.parse import (
    parse_endpoint,
    parse_mesh_service,
    parse_mesh_services_yaml,
)
from grpcmesh_control.mesh.model.schema import API_VERSION, CRD_PATH, KIND

__all__ = [
    "API_VERSION",
    "CRD_PATH",
    "KIND",
    "Backend",
    "CircuitBreaker",
    "Endpoint",
    "EnvVar",
    "ExternalHost",
    "FieldError",
    "GrpcSpec",
    "Idempotency",
    "InvalidResource",
    "KeyRef",
    "LoadBalancer",
    "MeshService",
    "MethodCatalog",
    "MethodInfo",
    "MethodPolicy",
    "OutlierDetection",
    "ResourceList",
    "Resources",
    "RetryBudget",
    "RetryOn",
    "RetryOverride",
    "RetryPolicy",
    "ServiceInfo",
    "TrafficPolicy",
    "VersionTarget",
    "Workload",
    "format_duration",
    "parse_duration",
    "parse_endpoint",
    "parse_mesh_service",
    "parse_mesh_services_yaml",
]
