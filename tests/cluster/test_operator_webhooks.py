"""The admission webhooks on the real control plane, as the chart installs them: the
operator issues its own serving certificate into the chart's Secret, patches its CA into the
chart's Validating and Mutating webhook configurations, and the API server calls it.

The API server dials a webhook ``service`` at the Service's endpoint addresses (the control
plane runs with ``--enable-aggregator-routing``): the chart's control Service, without a
selector, gets an endpoint on 127.0.0.1 at the operator's webhook port, and the certificate
names the Service's DNS name, as in a cluster. The operator's settings come from the chart's
own environment for it. The configurations are narrowed to the test's namespace (other tests
share the API server) and deleted afterwards.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from grpcmesh_control.cluster.controller import RuntimeSettings
from grpcmesh_control.cluster.objects.names import PROXY_CONTAINER
from grpcmesh_control.cluster.objects.webhook_tls import (
    SERVING_VALIDITY,
    TlsBundle,
    issue,
    renewal_reason,
    secret_body,
)
from tests.chart.chart import one, render
from tests.cluster.kube import KubeCluster, KubectlError, wait_until
from tests.cluster.operator_harness import example, operator_settings, wait_condition
from tests.cluster.operator_process import container_env
from tests.loopback import free_port
from tests.operator_thread import serving

CONFIGURATIONS = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")


@dataclass(frozen=True)
class ChartWebhooks:
    """The chart's webhook objects installed for one test, and the operator settings the
    chart gives it (ports and credentials for this machine)."""

    namespace: str
    configuration: str
    secret: str
    host: str
    settings: RuntimeSettings


def chart_env(objects: list[dict[str, Any]], deployment: str, namespace: str) -> dict[str, str]:
    """The operator container's environment as the kubelet resolves it."""
    pod = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "operator"]
    return container_env(container, pod_name=f"{deployment}-0", namespace=namespace)


@pytest.fixture
def webhooks(kube: KubeCluster, namespace: str) -> Iterator[ChartWebhooks]:
    release = f"wh-{namespace.rsplit('-', 1)[-1]}"
    objects = render(
        {"referenceServices": {"enabled": False}}, release=release, namespace=namespace
    )
    fullname = f"{release}-grpcmesh"
    control = one(objects, "Service", f"{fullname}-control")
    env = chart_env(objects, f"{fullname}-operator", namespace)
    port = free_port()
    # The control Service without its pod selector, its webhook port on this machine.
    (https,) = [p for p in control["spec"]["ports"] if p["port"] == 443]
    control["spec"] = {"ports": [https | {"targetPort": port}]}
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{fullname}-control-loopback",
            "labels": {
                "kubernetes.io/service-name": control["metadata"]["name"],
                "endpointslice.kubernetes.io/managed-by": "tests.grpcmesh.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": https["name"], "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }
    configurations = [one(objects, kind, fullname) for kind in CONFIGURATIONS]
    for configuration in configurations:
        for webhook in configuration["webhooks"]:
            webhook["namespaceSelector"] = {
                "matchLabels": {"kubernetes.io/metadata.name": namespace}
            }
    kube.apply([control, endpoints], namespace=namespace)
    kube.apply(configurations)
    settings = replace(
        operator_settings(kube),
        **{
            k: v
            for k, v in vars(RuntimeSettings.from_env(env)).items()
            if k.startswith("webhook_") or k in ("namespace", "missing_backends")
        },
    )
    settings = replace(settings, webhook_port=port, webhook_addr="127.0.0.1")
    assert settings.manages_webhook_tls
    try:
        yield ChartWebhooks(
            namespace=namespace,
            configuration=fullname,
            secret=env["GRPCMESH_WEBHOOK_SECRET"],
            host=env["GRPCMESH_WEBHOOK_HOST"],
            settings=settings,
        )
    finally:
        for kind in CONFIGURATIONS:
            kube.kubectl("delete", kind.lower(), fullname, "--ignore-not-found")
        kube.kubectl("delete", "meshservices", "--all", "-n", namespace, "--wait=true")


def ca_bundles(kube: KubeCluster, name: str) -> list[str | None]:
    return [
        w["clientConfig"].get("caBundle")
        for kind in CONFIGURATIONS
        for w in kube.get(kind.lower(), name)["webhooks"]
    ]


def managers(kube: KubeCluster, kind: str, name: str, namespace: str | None = None) -> set[str]:
    """Who wrote the object's fields (``metadata.managedFields``)."""
    where = ["-n", namespace] if namespace else []
    fields = kube.kubectl(
        "get", kind, name, *where, "--show-managed-fields",
        "-o", "jsonpath={.metadata.managedFields[*].manager}",
    )  # fmt: skip
    return set(fields.split())


def stored_bundle(kube: KubeCluster, hooks: ChartWebhooks) -> TlsBundle:
    bundle = TlsBundle.from_secret(kube.get("secret", hooks.secret, hooks.namespace))
    assert bundle is not None
    return bundle


def refusal(kube: KubeCluster, doc: dict[str, Any], namespace: str) -> str:
    """What the API server says when it refuses ``doc`` (fails if it accepts it)."""
    try:
        kube.apply([doc], namespace=namespace)
    except KubectlError as exc:
        return exc.stderr
    raise AssertionError(f"{doc['metadata']['name']} was admitted")


def admitted_through_the_webhook(kube: KubeCluster, hooks: ChartWebhooks, name: str) -> None:
    """The API server admits example ``name`` after calling the validating webhook (a
    failing call would refuse it: the chart's failurePolicy is Fail)."""
    kube.apply([example(name)], namespace=hooks.namespace)


def test_the_api_server_calls_the_webhooks_with_the_operator_issued_certificate(
    kube: KubeCluster, webhooks: ChartWebhooks
) -> None:
    ns = webhooks.namespace
    with serving(webhooks.settings) as op:
        secret = kube.get("secret", webhooks.secret, ns)
        assert secret is not None and secret["type"] == "kubernetes.io/tls"
        assert managers(kube, "secret", webhooks.secret, ns) == {"grpcmesh-operator"}
        for kind in CONFIGURATIONS:  # the chart's apply, and the operator's caBundle patch
            assert "grpcmesh-operator" in managers(kube, kind.lower(), webhooks.configuration)
        ca = secret["data"]["ca.crt"]
        assert ca_bundles(kube, webhooks.configuration) == [ca, ca]
        assert (
            renewal_reason(stored_bundle(kube, webhooks), [webhooks.host], datetime.now(UTC))
            is None
        )

        # Ready only now that the webhook server listens too (the Service sends admission
        # reviews to ready endpoints only).
        with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/readyz") as ready:
            assert (ready.status, ready.read()) == (200, b"active\n")
        admitted_through_the_webhook(kube, webhooks, "payments")
        wait_condition(kube, ns, "payments", "Registered", ("True", "Registered"))
        claim = example("payments")
        claim["metadata"]["name"] = "payments-copy"
        message = refusal(kube, claim, ns)
        assert "admission webhook" in message and "denied the request" in message, message
        assert "spec.grpc.services[0]" in message, message
        assert "grpcmesh.shop.v1.PaymentService is already served by" in message, message
        assert kube.get("meshservice", "payments-copy", ns) is None

        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "orders-x",
                "labels": {"grpcmesh.io/inject": "true", "grpcmesh.io/service": "orders"},
            },
            "spec": {"containers": [{"name": "app", "image": "orders:1"}]},
        }
        kube.apply([pod], namespace=ns)
        stored = kube.get("pod", "orders-x", ns)["spec"]
        assert PROXY_CONTAINER in {c["name"] for c in stored.get("initContainers") or []}
        assert [c["name"] for c in stored["containers"]] == ["app"]
        assert op.webhook_tls_dir is not None

    with serving(webhooks.settings):  # a restart (or a second replica) keeps what is there
        again = kube.get("secret", webhooks.secret, ns)
        assert again["data"] == secret["data"]
        admitted_through_the_webhook(kube, webhooks, "catalog")


def test_a_certificate_near_its_end_is_renewed_while_running(
    kube: KubeCluster, webhooks: ChartWebhooks
) -> None:
    """The operator re-checks its Secret periodically: a serving certificate that expires
    within 30 days is renewed from the same CA (the installed caBundle stays valid), the
    files kopf serves from are swapped, and the API server's calls keep succeeding."""
    ns = webhooks.namespace
    settings = replace(webhooks.settings, webhook_renew_interval=0.2)
    with serving(settings) as op:
        stored = stored_bundle(kube, webhooks)
        bundle_before = ca_bundles(kube, webhooks.configuration)
        assert op.webhook_tls_dir is not None
        # Someone's clock, a year on: the stored certificate has 10 days left.
        aging = issue(
            [webhooks.host], datetime.now(UTC) - SERVING_VALIDITY + timedelta(days=10), ca=stored
        )
        aged = json.dumps({"data": secret_body(aging, webhooks.secret, ns)["data"]})
        kube.kubectl("patch", "secret", webhooks.secret, "-n", ns, "--type=merge", "-p", aged)
        served = op.webhook_tls_dir / "current" / "tls.crt"

        def renewed() -> TlsBundle | None:
            now = stored_bundle(kube, webhooks)
            if now.cert in (aging.cert, stored.cert):
                return None
            return now if served.read_bytes() == now.cert else None

        fresh = wait_until(renewed, "the renewed certificate in the Secret and on disk")
        assert fresh.ca_cert == stored.ca_cert
        assert renewal_reason(fresh, [webhooks.host], datetime.now(UTC)) is None
        assert (op.webhook_tls_dir / "current" / "tls.key").read_bytes() == fresh.key
        assert ca_bundles(kube, webhooks.configuration) == bundle_before
        admitted_through_the_webhook(kube, webhooks, "payments")
        assert base64.b64decode(bundle_before[0] or "") == fresh.ca_cert


def test_a_mounted_certificate_is_served_as_cert_manager_provides_it(
    kube: KubeCluster, webhooks: ChartWebhooks, tmp_path: Path
) -> None:
    """With cert-manager, the certificate is a mounted file and its cainjector fills the
    caBundle: the test plays both, and the operator serves the files and leaves its own
    Secret and the caBundle alone."""
    ns = webhooks.namespace
    bundle = issue([webhooks.host], datetime.now(UTC))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(bundle.cert)
    key.write_bytes(bundle.key)
    ca = base64.b64encode(bundle.ca_cert).decode()
    for kind in CONFIGURATIONS:
        configuration = kube.get(kind.lower(), webhooks.configuration)
        patch = [
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca}
            for i in range(len(configuration["webhooks"]))
        ]
        kube.kubectl(
            "patch", kind.lower(), webhooks.configuration, "--type=json", "-p", json.dumps(patch)
        )
    settings = replace(
        webhooks.settings, webhook_certfile=cert, webhook_pkeyfile=key, webhook_configurations=()
    )
    assert not settings.manages_webhook_tls
    with serving(settings):
        admitted_through_the_webhook(kube, webhooks, "payments")
        wait_condition(kube, ns, "payments", "Registered", ("True", "Registered"))
        broken = example("catalog")
        broken["spec"]["grpc"]["services"] = ["grpcmesh.shop.v1.PaymentService"]
        message = refusal(kube, broken, ns)
        assert "spec.grpc.services[0]" in message, message
        admin_port = example("inventory")
        admin_port["spec"]["grpc"]["port"] = 15000  # the sidecar's admin port
        assert "spec.grpc.port" in refusal(kube, admin_port, ns)
    assert kube.get("secret", webhooks.secret, ns) is None
    assert ca_bundles(kube, webhooks.configuration) == [ca, ca]
