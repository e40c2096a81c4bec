"""The admission webhooks over HTTPS: kopf's WebhookServer in the running operator, a serving
certificate made with ``openssl`` for 127.0.0.1, and AdmissionReviews posted by a client that
verifies it (as the API server does with the webhook's caBundle)."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from grpcmesh_control.k8s.names import PROXY_CONTAINER
from grpcmesh_control.k8s_runtime import Operator
from tests.integration.operator.conftest import Api, example, operator_settings
from tests.loopback import free_port, poll
from tests.operator_thread import running


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def webhook(api: Api, certificate: tuple[Path, Path]) -> AsyncIterator[tuple[Operator, str]]:
    port = free_port()
    settings = operator_settings(
        api,
        webhook_port=port,
        webhook_addr="127.0.0.1",
        webhook_host="127.0.0.1",
        webhook_certfile=certificate[0],
        webhook_pkeyfile=certificate[1],
    )
    async with running(settings) as op:
        yield op, f"https://127.0.0.1:{port}"


def review(
    obj: dict[str, Any], group: str, version: str, resource: str, kind: str
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "operation": "CREATE",
            "namespace": "default",
            "name": obj["metadata"].get("name"),
            "object": obj,
            "userInfo": {"username": "test"},
            "dryRun": False,
        },
    }


async def post(url: str, cafile: Path, body: dict[str, Any]) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(cafile))

    async def attempt() -> dict[str, Any] | None:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, json=body, ssl=context) as response,
            ):
                assert response.status == 200, await response.text()
                result = await response.json()
                assert isinstance(result, dict)
                return result
        except aiohttp.ClientConnectorError:
            return None  # the webhook server is still starting

    return await poll(attempt, f"an answer from {url}")


async def test_validating_webhook(
    webhook: tuple[Operator, str], certificate: tuple[Path, Path]
) -> None:
    _, url = webhook
    good = example("payments")
    answer = await post(
        f"{url}/meshservices",
        certificate[0],
        review(good, "grpcmesh.io", "v1alpha1", "meshservices", "MeshService"),
    )
    assert answer["response"]["allowed"] is True

    bad = example("payments")
    bad["spec"]["grpc"]["port"] = 15000  # the sidecar's admin port
    answer = await post(
        f"{url}/meshservices",
        certificate[0],
        review(bad, "grpcmesh.io", "v1alpha1", "meshservices", "MeshService"),
    )
    assert answer["response"]["allowed"] is False
    assert "spec.grpc.port" in answer["response"]["status"]["message"]


async def test_mutating_webhook_injects_the_sidecar(
    webhook: tuple[Operator, str], certificate: tuple[Path, Path]
) -> None:
    _, url = webhook
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "orders-x",
            "namespace": "default",
            "labels": {"grpcmesh.io/inject": "true", "grpcmesh.io/service": "orders"},
        },
        "spec": {"containers": [{"name": "app", "image": "orders:1"}]},
    }
    answer = await post(f"{url}/inject", certificate[0], review(pod, "", "v1", "pods", "Pod"))
    response = answer["response"]
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    added = json.dumps(ops)
    assert PROXY_CONTAINER in added
