"""The k8s package's public surface is pinned, and it stays free of kopf and grpc."""

from __future__ import annotations

import subprocess
import sys

import grpcmesh_control.cluster.objects as k8s


def test_k8s_all() -> None:
    assert sorted(k8s.__all__) == sorted(
        [
            "OWNED_KINDS", "AppDefaults", "AppMeshSettings", "ApplyFailure", "ConditionStatus",
            "ConditionType", "EgressFilter", "EndpointCount", "Kind", "MissingBackends",
            "Observation", "OperatorSettings", "OwnerRef", "Provider", "ProxySettings",
            "Reason", "SidecarAck", "WorkloadRollout", "appmesh_objects", "compute_status",
            "desired_objects", "kind_of", "mutate_pod", "object_key",
            "read_only_root_violations", "render_problems", "restricted_violations",
            "validate_admission",
        ]
    )  # fmt: skip
    assert all(hasattr(k8s, name) for name in k8s.__all__)


def test_k8s_imports_neither_kopf_nor_grpc() -> None:
    # A fresh interpreter: this one may already have them loaded by other tests.
    script = (
        "import sys, grpcmesh_control.cluster.objects;"
        "print(' '.join(sorted(m for m in sys.modules"
        " if m.split('.')[0] in {'grpc', 'kopf', 'kubernetes_asyncio', 'aiohttp'})))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split() == []
