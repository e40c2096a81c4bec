"""Operator-managed webhook TLS against kmock: with no mounted certificate the operator
issues one into a Secret, installs the CA in both webhook configurations' caBundle and serves
HTTPS with it; a restarted operator reuses it. The client verifies the server with the CA read
back from the API, as the API server does."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from grpcmesh_control.k8s.webhook_tls import (
    SERVING_VALIDITY,
    TlsBundle,
    issue,
    renewal_reason,
    secret_body,
)
from tests.integration.operator.conftest import Api, example, operator_settings
from tests.integration.operator.test_admission import post, review
from tests.loopback import free_port, poll
from tests.operator_thread import running

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


async def test_a_certificate_near_its_end_is_renewed_while_running(api: Api) -> None:
    """The operator re-checks its Secret periodically: a serving certificate that expires
    within 30 days is renewed from the same CA (the installed caBundle stays valid) and the
    files kopf serves from are swapped for the new ones."""
    await api.create(
        "validatingwebhookconfigurations",
        configuration("ValidatingWebhookConfiguration", "meshservices.grpcmesh.io"),
    )
    settings = operator_settings(
        api,
        webhook_port=free_port(),
        webhook_addr="127.0.0.1",
        webhook_host="127.0.0.1",
        webhook_secret=SECRET,
        webhook_configurations=(CONFIGURATION,),
        namespace=NAMESPACE,
        webhook_renew_interval=0.2,
    )
    async with running(settings) as op:
        stored = TlsBundle.from_secret(await api.get("secrets", SECRET, ns=NAMESPACE))
        assert stored is not None and op.webhook_tls_dir is not None
        # Someone's clock, a year on: the stored certificate has 10 days left.
        aging = issue(
            ["127.0.0.1"], datetime.now(UTC) - SERVING_VALIDITY + timedelta(days=10), ca=stored
        )
        await api.patch("secrets", SECRET, secret_body(aging, SECRET, NAMESPACE), ns=NAMESPACE)
        served = op.webhook_tls_dir / "current" / "tls.crt"

        async def renewed() -> TlsBundle | None:
            now = TlsBundle.from_secret(await api.get("secrets", SECRET, ns=NAMESPACE))
            if now is None or now.cert in (aging.cert, stored.cert):
                return None
            return now if served.read_bytes() == now.cert else None

        fresh = await poll(renewed, "the renewed certificate in the Secret and on disk")
        assert fresh.ca_cert == stored.ca_cert
        assert renewal_reason(fresh, ["127.0.0.1"], datetime.now(UTC)) is None
        assert (op.webhook_tls_dir / "current" / "tls.key").read_bytes() == fresh.key
