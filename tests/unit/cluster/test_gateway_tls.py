"""The gateway's TLS Secret in a cluster: the certificate a ``kubernetes.io/tls`` Secret holds
(cluster.objects.gateway_tls), a broken Secret named with its key, the operator's settings
from the chart's environment, and the refresher that serves the Secret to connected gateways
and keeps the last good certificate when the Secret goes missing or bad (a fake API)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest

from grpcmesh_control.cluster.controller.client import KubeClient
from grpcmesh_control.cluster.controller.gateway_tls import GatewayTlsSecret
from grpcmesh_control.cluster.controller.operator import Operator
from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.objects.gateway_tls import gateway_certificate_from_secret
from grpcmesh_control.cluster.objects.meta import tls_secret
from grpcmesh_control.host.xds_host import XdsHost
from grpcmesh_control.mesh.ca import CertificateAuthority
from grpcmesh_control.mesh.gateway_tls import GatewayTlsError
from grpcmesh_control.mesh.translate import GatewayTls, NodeId
from grpcmesh_control.mesh.translate.tls import GATEWAY_CERTIFICATE_SECRET

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
NAMESPACE, NAME = "grpcmesh-system", "grpcmesh-gateway-tls"
GATEWAY = str(NodeId.ingress("gateway", "pod-a"))


def _secret(with_ca: bool = True) -> dict[str, Any]:
    root = CertificateAuthority.create_root(NOW)
    issued = root.issue_serving(["shop.example"], NOW, validity=dt.timedelta(days=90))
    data = {"tls.crt": issued.cert_chain_pem(), "tls.key": issued.key_pem()}
    if with_ca:
        data["ca.crt"] = root.pem()[2]
    return tls_secret(NAME, NAMESPACE, data)


def test_the_secret_holds_the_certificate_and_client_cas_only_when_required() -> None:
    secret = _secret()
    served = gateway_certificate_from_secret(secret)
    assert served.client_roots_pem is None and served.tls == GatewayTls()
    required = gateway_certificate_from_secret(secret, require_client_certificate=True)
    assert required.client_roots_pem is not None
    assert required.tls == GatewayTls(require_client_certificate=True)


def test_a_broken_secret_is_named_with_its_key() -> None:
    secret = _secret(with_ca=False)
    where = rf"Secret {NAMESPACE}/{NAME}"
    with pytest.raises(GatewayTlsError, match=rf"{where}: data\.ca\.crt is missing \(client"):
        gateway_certificate_from_secret(secret, require_client_certificate=True)
    missing = {**secret, "data": {"tls.crt": secret["data"]["tls.crt"]}}
    with pytest.raises(GatewayTlsError, match=rf"{where}: data\.tls\.key is missing"):
        gateway_certificate_from_secret(missing)
    other_key = _secret()["data"]["tls.key"]
    swapped = {**secret, "data": {**secret["data"], "tls.key": other_key}}
    with pytest.raises(GatewayTlsError, match=rf"{where}: data\.tls\.key: not the key of"):
        gateway_certificate_from_secret(swapped)


def test_settings_come_from_the_charts_environment() -> None:
    assert RuntimeSettings.from_env({}).gateway_tls_secret is None
    settings = RuntimeSettings.from_env(
        {"GRPCMESH_GATEWAY_TLS_SECRET": NAME, "GRPCMESH_GATEWAY_CLIENT_CERTIFICATES": "true"}
    )
    assert (settings.gateway_tls_secret, settings.gateway_client_certificates) == (NAME, True)


class FakeSecrets:
    """The one call the operator makes for it: ``get`` the Secret."""

    def __init__(self, secret: dict[str, Any] | None) -> None:
        self.secret = secret
        self.gets = 0

    async def get(self, kind: object, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        assert (namespace, name) == (NAMESPACE, NAME)
        return self.secret


def _served(host: XdsHost) -> bytes | None:
    secrets = host.cache.node_secrets(GATEWAY)
    if secrets is None or GATEWAY_CERTIFICATE_SECRET not in secrets.resources:
        return None
    return bytes(secrets.resources[GATEWAY_CERTIFICATE_SECRET].value)


async def test_the_refresher_serves_the_secret_and_keeps_the_last_good_one() -> None:
    settings = RuntimeSettings(namespace=NAMESPACE, gateway_tls_secret=NAME)
    operator = Operator(settings)
    host = operator.host
    api = FakeSecrets(None)
    refresher = operator.gateway_tls = GatewayTlsSecret(host, settings)
    assert host.gateway is not None and host.gateway.tls == GatewayTls()
    host.cache.connected(GATEWAY)
    client = cast(KubeClient, api)
    assert await refresher.refresh(client) is False  # not there yet: nothing served
    problem = f"gateway TLS: Secret {NAMESPACE}/{NAME} does not exist"
    assert refresher.problem == problem and host.status()["problems"] == [problem]
    assert _served(host) is None
    api.secret = _secret()
    assert await refresher.refresh(client) is True
    first = _served(host)
    assert first is not None and host.status()["problems"] == []
    assert await refresher.refresh(client) is False  # unchanged
    api.secret = {**api.secret, "data": {"tls.crt": api.secret["data"]["tls.crt"]}}
    assert await refresher.refresh(client) is False
    assert refresher.problem is not None and "data.tls.key is missing" in refresher.problem
    assert _served(host) == first  # the last good one stays
    api.secret = _secret()
    assert await refresher.refresh(client) is True
    assert _served(host) not in (None, first)
    assert api.gets == 5
