"""Operator-managed webhook TLS against kmock: with no mounted certificate the operator
issues one into a Secret, installs the CA in both webhook configurations' caBundle and serves
HTTPS with it; a restarted operator reuses it. The client verifies the server with the CA read
back from the API, as the API server does."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from tests.integration.operator.conftest import (
    Api,
    example,
    free_port,
    operator_settings,
    running,
)
from tests.integration.operator.test_admission import post, review

NAMESPACE = "grpcmesh-system"
SECRET = "grpcmesh-webhook-tls"
CONFIGURATION = "grpcmesh"


def configuration(kind: str, webhook: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": CONFIGURATION},
        "webhooks": [
            {
                "name": webhook,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {
                    "service": {"name": "grpcmesh-control", "namespace": NAMESPACE, "port": 443}
                },
            }
        ],
    }


async def ca_bundles(api: Api) -> list[str]:
    bundles = []
    for plural in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        body = await api.get(plural, CONFIGURATION)
        assert body is not None
        bundles += [w["clientConfig"].get("caBundle") for w in body["webhooks"]]
    return bundles


async def test_the_operator_issues_installs_and_reuses_its_certificate(
    api: Api, tmp_path: Path
) -> None:
    await api.create(
        "validatingwebhookconfigurations",
        configuration("ValidatingWebhookConfiguration", "meshservices.grpcmesh.io"),
    )
    await api.create(
        "mutatingwebhookconfigurations",
        configuration("MutatingWebhookConfiguration", "inject.grpcmesh.io"),
    )
    port = free_port()
    settings = operator_settings(
        api,
        webhook_port=port,
        webhook_addr="127.0.0.1",
        webhook_host="127.0.0.1",
        webhook_secret=SECRET,
        webhook_configurations=(CONFIGURATION,),
        namespace=NAMESPACE,
    )
    async with running(settings):
        secret = await api.get("secrets", SECRET, ns=NAMESPACE)
        assert secret is not None and secret["type"] == "kubernetes.io/tls"
        ca = secret["data"]["ca.crt"]
        assert await ca_bundles(api) == [ca, ca]
        cafile = tmp_path / "ca.crt"
        cafile.write_bytes(base64.b64decode(ca))
        answer = await post(
            f"https://127.0.0.1:{port}/meshservices",
            cafile,
            review(example("payments"), "grpcmesh.io", "v1alpha1", "meshservices", "MeshService"),
        )
        assert answer["response"]["allowed"] is True

    async with running(settings):  # a restart (or a second replica) keeps what is there
        again = await api.get("secrets", SECRET, ns=NAMESPACE)
        assert again is not None and again["data"] == secret["data"]
        answer = await post(
            f"https://127.0.0.1:{port}/meshservices",
            cafile,
            review(example("catalog"), "grpcmesh.io", "v1alpha1", "meshservices", "MeshService"),
        )
        assert answer["response"]["allowed"] is True
