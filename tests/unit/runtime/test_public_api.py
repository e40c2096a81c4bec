"""The sources package's surface is pinned, and it stays pure: no grpc, no aiohttp."""

from __future__ import annotations

import subprocess
import sys

import grpcmesh_control.local.sources as sources


def test_sources_all() -> None:
    assert sorted(sources.__all__) == sorted(
        [
            "ENDPOINTS_FILE", "RESOURCES_DIR", "ApplyPlan", "EndpointMap", "ResourceSet",
            "SourcedService", "check_resource_set", "content_digest", "parse_endpoints",
            "parse_resource_files", "plan_apply", "plan_delete", "read_endpoints",
            "read_resource_files",
        ]
    )  # fmt: skip
    assert all(hasattr(sources, name) for name in sources.__all__)


def test_sources_import_neither_grpc_nor_aiohttp() -> None:
    script = (
        "import sys, grpcmesh_control.local.sources;"
        "print(' '.join(sorted(m for m in sys.modules"
        " if m.split('.')[0] in {'grpc', 'aiohttp', 'kopf'})))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split() == []
