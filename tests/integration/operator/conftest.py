"""The operator (in its own thread) against kmock, an emulated Kubernetes API over real HTTP,
for the faults a real API server does not produce on demand (5xx, slow answers, dropped
watches). Everything else runs on the real control plane (tests/cluster).

kmock does not do server-side apply, label selectors, uids, generations or garbage collection:
the operator runs with ``ApplyStrategy.CREATE_OR_MERGE``, and the tests create MeshServices with
a ``metadata.uid`` (the API server would set one).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml

from grpcmesh_control.cluster.controller import ApplyStrategy, Operator, RuntimeSettings
from tests.loopback import free_port
from tests.operator_thread import running

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "manifests" / "examples"

MESH_SERVICES = "/apis/grpcmesh.io/v1alpha1/namespaces/{ns}/meshservices"
PATHS = {
    "configmaps": "/api/v1/namespaces/{ns}/configmaps",
    "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
    "events": "/api/v1/namespaces/{ns}/events",
    "meshservices": MESH_SERVICES,
}


def example(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    assert isinstance(doc, dict)
    doc["metadata"]["uid"] = str(uuid.uuid4())  # kmock does not assign uids
    doc["metadata"].setdefault("namespace", "default")  # as the API server sets it
    return doc


@dataclass
class Api:
    """A thin HTTP client for the emulated API (the test's kubectl)."""

    url: str
    http: aiohttp.ClientSession

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        async with self.http.request(
            method, self.url + path, json=body, headers=headers
        ) as response:
            text = await response.text()
            try:
                return response.status, await response.json(content_type=None)
            except ValueError:
                return response.status, text

    async def create(self, plural: str, body: dict[str, Any], ns: str = "default") -> Any:
        status, result = await self.request("POST", PATHS[plural].format(ns=ns), body)
        assert status in (200, 201), result
        return result

    async def get(self, plural: str, name: str, ns: str = "default") -> dict[str, Any] | None:
        status, result = await self.request("GET", PATHS[plural].format(ns=ns) + f"/{name}")
        if status == 404:
            return None
        assert status == 200, result
        assert isinstance(result, dict)
        return result

    async def list(self, plural: str, ns: str = "default") -> list[dict[str, Any]]:
        status, result = await self.request("GET", PATHS[plural].format(ns=ns))
        assert status == 200, result
        return list(result.get("items") or [])


@pytest.fixture
async def api(kmock: kmock.KubernetesEmulator) -> AsyncIterator[Api]:
    kmock.resources.load_bundled()
    kmock.resources["grpcmesh.io/v1alpha1/meshservices"] = kmock.ResourceInfo(
        kind="MeshService",
        singular="meshservice",
        namespaced=True,
        verbs={"list", "watch", "get", "create", "patch", "delete", "update"},
        subresources={"status"},
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        yield Api(str(kmock.url).rstrip("/"), http)


def operator_settings(api: Api, **overrides: Any) -> RuntimeSettings:
    values: dict[str, Any] = {
        "api_server": api.url,
        "apply_strategy": ApplyStrategy.CREATE_OR_MERGE,
        "xds_host": "127.0.0.1",
        "xds_port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "liveness_endpoint": f"http://127.0.0.1:{free_port()}/healthz",
        "resync_interval": 0.3,
    }
    return RuntimeSettings(**(values | overrides))


@pytest.fixture
async def operator(api: Api) -> AsyncIterator[Operator]:
    async with running(operator_settings(api)) as op:
        yield op
