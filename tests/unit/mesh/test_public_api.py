"""The public surface is pinned, and the pure core stays free of kopf and grpc."""

from __future__ import annotations

import subprocess
import sys

import grpcmesh_control.mesh.model as model
import grpcmesh_control.mesh.translate as translate


def test_model_all() -> None:
    assert sorted(model.__all__) == sorted(
        [
            "API_VERSION", "CRD_PATH", "KIND", "AllowedCalls", "Authorization",
            "AuthorizationRule", "Backend", "Callers", "CircuitBreaker", "Endpoint", "EnvVar",
            "ExternalHost", "FaultAbort", "FaultDelay", "FaultInjection", "FieldError",
            "GrpcCode", "GrpcSpec", "Idempotency", "InvalidResource", "KeyRef",
            "LoadBalancer", "MeshService", "MethodCatalog", "MethodInfo", "MethodPolicy",
            "MtlsMode", "OutlierDetection", "ResourceList", "Resources", "RetryBudget", "RetryOn",
            "RetryOverride", "RetryPolicy", "ServiceInfo", "TrafficPolicy", "VersionTarget",
            "Workload", "format_duration", "parse_duration", "parse_endpoint",
            "parse_mesh_service", "parse_mesh_services_yaml",
        ]
    )  # fmt: skip
    assert all(hasattr(model, name) for name in model.__all__)


def test_translate_all() -> None:
    assert sorted(translate.__all__) == sorted(
        [
            "PUSH_ORDER", "EffectiveRetry", "GatewayTls", "InconsistentSnapshot", "InvalidNodeId",
            "MeshTls", "NodeId",
            "NodeKind", "Problem", "ProxyNode", "Registry", "ResourceType", "RoutePolicy",
            "Snapshot", "SnapshotBuilder", "UnknownNode", "build_snapshot", "check_consistency",
            "external_cluster_name", "gateway_secrets", "inbound_cluster_name", "node_group",
            "resource_name",
            "route_policies",
            "static_bootstrap", "version_cluster_name", "workload_secrets",
        ]
    )  # fmt: skip
    assert all(hasattr(translate, name) for name in translate.__all__)


def test_core_imports_neither_kopf_nor_grpc() -> None:
    # A fresh interpreter: this one may already have grpc loaded by other tests.
    script = (
        "import sys, grpcmesh_control.mesh.model, grpcmesh_control.mesh.translate;"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {'grpc', 'kopf'})))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split() == []
