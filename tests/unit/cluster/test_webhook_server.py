"""The admission webhook's server (kopf's, bounded): a real HTTP server on 127.0.0.1 serving
the real MeshService validation. Oversized, deeply nested and huge-but-well-formed reviews
are refused with a 4xx and a reason, quickly; before the bounds, nested JSON was a 500 and a
huge object was walked whole by the schema check."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import aiohttp
import kopf
import pytest

from grpcmesh_control.cluster.controller.webhook_server import (
    MAX_REVIEW_BYTES,
    BoundedWebhookServer,
)
from grpcmesh_control.cluster.objects import validate_admission
from grpcmesh_control.mesh.model.bounds import MAX_NODES

REFUSAL_SECONDS = 2.0  # generous on a shared 2-core machine; the checks take milliseconds


async def _validate(data: Any, **_: Any) -> dict[str, Any]:
    return validate_admission(data, known_services=(), catalog=None)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    server = BoundedWebhookServer(addr="127.0.0.1", host="127.0.0.1", insecure=True)
    configs = cast(
        AsyncGenerator[kopf.WebhookClientConfig, None],
        server(cast(kopf.WebhookFn, _validate)),
    )
    config = await anext(configs)
    try:
        yield str(config["url"]).rstrip("/") + "/validate"
    finally:
        await configs.aclose()


def _review(obj: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u1", "operation": "CREATE", "namespace": "shop", "object": obj},
    }


def _mesh_service(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": "echo", "namespace": "shop"},
        "spec": {"grpc": {"port": 9000, "services": ["test.v1.Echo"]}, **spec},
    }


async def _post(url: str, body: bytes) -> tuple[int, str, float]:
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": "application/json"}) as response,
    ):
        return response.status, await response.text(), time.monotonic() - started


async def test_a_valid_review_is_allowed(url: str) -> None:
    status, text, _ = await _post(url, json.dumps(_review(_mesh_service())).encode())
    assert status == 200, text
    assert json.loads(text)["response"]["allowed"] is True


async def test_an_oversized_review_is_413_before_it_is_read(url: str) -> None:
    padding = "x" * (MAX_REVIEW_BYTES + 1)
    body = json.dumps(_review(_mesh_service(config={"pad": padding}))).encode()
    status, text, elapsed = await _post(url, body)
    assert status == 413
    assert f"at most {MAX_REVIEW_BYTES}" in text
    assert elapsed < REFUSAL_SECONDS


async def test_deeply_nested_json_is_400_with_a_reason(url: str) -> None:
    depth = 200_000  # under the size bound, past Python's recursion limit
    body = b'{"request": {"object": ' + b"[" * depth + b"]" * depth + b"}}"
    assert len(body) < MAX_REVIEW_BYTES
    status, text, elapsed = await _post(url, body)
    assert status == 400, text
    assert "nested too deeply" in text
    assert elapsed < REFUSAL_SECONDS


async def test_a_huge_object_is_denied_naming_the_bound(url: str) -> None:
    wide = _mesh_service(config={f"k{i}": "v" for i in range(40_000)})
    body = json.dumps(_review(wide)).encode()
    assert len(body) < MAX_REVIEW_BYTES
    status, text, elapsed = await _post(url, body)
    assert status == 200, text
    response = json.loads(text)["response"]
    assert response["allowed"] is False
    assert f"more than {MAX_NODES} values" in response["status"]["message"]
    assert elapsed < REFUSAL_SECONDS


async def test_bad_labels_are_denied_naming_the_field(url: str) -> None:
    obj = _mesh_service()
    obj["metadata"]["labels"] = {"team": "x" * 64}
    status, text, _ = await _post(url, json.dumps(_review(obj)).encode())
    assert status == 200, text
    response = json.loads(text)["response"]
    assert response["allowed"] is False
    assert "metadata.labels['team']" in response["status"]["message"]
