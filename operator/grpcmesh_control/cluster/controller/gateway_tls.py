"""The gateway's TLS Secret at the edge: read it, serve it, read it again.

``GatewayTlsSecret`` makes the xDS host serve TLS on the ingress listener
(``XdsHost.use_gateway_tls``, before the first snapshot) and feeds it the certificate in the
Secret ``settings.gateway_tls_secret`` names (``cluster.objects.gateway_tls``), read with
``get`` at start and every ``gateway_tls_refresh`` seconds: the operator may read that one
Secret and nothing else (a Role with ``resourceNames``), so it polls instead of watching. A
missing or broken Secret is logged and shown as a problem in ``/status``; the gateway keeps
the last good certificate, or, before there was one, serves no TLS handshake at all (never
plaintext).
"""

from __future__ import annotations

import asyncio
import logging

from grpcmesh_control.cluster.controller.client import ApiError, KubeClient
from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.objects.gateway_tls import gateway_certificate_from_secret
from grpcmesh_control.cluster.objects.kinds import SECRET
from grpcmesh_control.host.xds_host import XdsHost
from grpcmesh_control.mesh.gateway_tls import GatewayTlsError
from grpcmesh_control.mesh.translate import GatewayTls

__all__ = ["GatewayTlsSecret"]

log = logging.getLogger(__name__)


class GatewayTlsSecret:
    """See the module docstring. ``problem``: why the last read served nothing new, if so."""

    def __init__(self, host: XdsHost, settings: RuntimeSettings) -> None:
        assert settings.gateway_tls_secret is not None
        self._settings = settings
        self._require_client = settings.gateway_client_certificates
        self._gateway = host.use_gateway_tls(
            GatewayTls(require_client_certificate=self._require_client)
        )
        self.problem: str | None = None

    @property
    def where(self) -> str:
        return f"Secret {self._settings.namespace}/{self._settings.gateway_tls_secret}"

    async def refresh(self, client: KubeClient) -> bool:
        """Read the Secret once and serve what it holds; whether the served certificate
        changed. Never raises for a missing or broken Secret (``problem`` says why)."""
        settings = self._settings
        assert settings.gateway_tls_secret is not None
        try:
            stored = await client.get(SECRET, settings.namespace, settings.gateway_tls_secret)
            if stored is None:
                raise GatewayTlsError(f"{self.where} does not exist")
            certificate = gateway_certificate_from_secret(
                stored, require_client_certificate=self._require_client
            )
            changed = self._gateway.update(certificate)
        except (ApiError, GatewayTlsError) as exc:
            problem = f"gateway TLS: {exc}"
            if problem != self.problem:
                log.error("%s; the gateway keeps its previous certificate, if any", problem)
            self.problem = problem
            return False
        if changed:
            log.info("gateway TLS: serving %s (valid until %s)", self.where, certificate.not_after)
        self.problem = None
        return changed

    async def refresh_forever(self, client: KubeClient) -> None:
        """``refresh`` every ``gateway_tls_refresh`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self._settings.gateway_tls_refresh)
            await self.refresh(client)
