"""The local mesh's credential: a random bearer token in the run directory, mode 0600.

Local mode's control plane can launch commands (``POST /apply`` takes a ``workload.command``)
and shows every proxy's configuration (``/debug/*``), so those endpoints answer only requests
carrying ``Authorization: Bearer <token>``. The token is the content of ``RUN/credential``,
readable by its owner alone: any process of the user who ran ``grpcmesh up`` (the CLI, tests,
scripts) can read it, other local users cannot. ``/healthz``, ``/metrics`` and ``/status`` stay
open: they change nothing and reveal only addresses and versions, and the launcher's liveness
probe and Prometheus scrape them without a token.

One module so every part that needs the credential (the control plane, the CLI, the launcher,
tests) reads and checks it the same way::

    token = credential.create(run_dir)        # the launcher, for a fresh mesh
    token = credential.ensure(run_dir)        # the control plane: the file, or a new one
    token = credential.read(run_dir)          # a client; CredentialError names the file
    headers = credential.headers(token)       # {"Authorization": "Bearer ..."}
    app.middlewares.append(credential.middleware(token))

Each xDS client proves its node id to the xDS server with a token of its own, derived from the
mesh's credential: ``node_token(token, node_id)`` is a JWT (RFC 7519) signed HS256 with the
credential, whose claims are ``sub`` (the node id), ``aud`` (``NODE_TOKEN_AUDIENCE``), ``iat`` and
``exp``. A JWT because gRPC's xDS client sends one from a file (gRFC A97's ``jwt_token_file``
call credentials, which read ``exp`` to know when to read the file again), and one form serves
both kinds of client. The launcher renders an Envoy's token into its bootstrap (mode 0600) as
ADS call metadata ``authorization: Bearer <node token>``, and writes a proxyless app's token to
its replica's ``xds-token`` file (mode 0600) that its gRPC bootstrap names. ``NodeTokens`` (the
control plane's ``NodeAuthenticator``) verifies signature, audience and expiry and lets the
caller ask for that node alone. A node's token reveals neither the credential nor another
node's token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.mesh.errors import MeshError

__all__ = [
    "CREDENTIAL_FILE",
    "FILE_MODE",
    "NODE_TOKEN_AUDIENCE",
    "NODE_TOKEN_LIFETIME_S",
    "NODE_TOKEN_METADATA",
    "OPEN_PATHS",
    "CredentialError",
    "NodeTokens",
    "create",
    "ensure",
    "headers",
    "middleware",
    "new_token",
    "node_metadata",
    "node_token",
    "node_token_expiry",
    "read",
]

CREDENTIAL_FILE = "credential"
FILE_MODE = 0o600
OPEN_PATHS = frozenset({"/healthz", "/metrics", "/status"})
"""Answered without the credential: read-only, and polled by probes and scrapers."""
_SCHEME = "Bearer"
_TOKEN_BYTES = 32


class CredentialError(MeshError):
    """The credential file is missing, unreadable or not private; the message names it."""


def _path(run_dir: Path) -> Path:
    return run_dir / CREDENTIAL_FILE


def new_token() -> str:
    """A fresh random credential (``create`` writes one)."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


def create(run_dir: Path, token: str | None = None) -> str:
    """``token`` (a new random one by default) written to ``RUN/credential`` (mode 0600,
    replacing any old one)."""
    token = token or new_token()
    path = _path(run_dir)
    write_atomically(path, token + "\n", mode=FILE_MODE)
    return token


def read(run_dir: Path) -> str:
    """The token of the mesh in ``run_dir``. Refuses a file others can read or write."""
    path = _path(run_dir)
    try:
        mode = path.stat().st_mode & 0o777
        token = path.read_text().strip()
    except FileNotFoundError:
        raise CredentialError(f"{path}: no credential (is a mesh running in {run_dir}?)") from None
    except OSError as exc:
        raise CredentialError(f"{path}: cannot read the credential: {exc.strerror}") from None
    if mode & 0o077:
        raise CredentialError(f"{path}: mode {mode:04o}, must be 0600 (readable by its owner only)")
    if not token:
        raise CredentialError(f"{path}: empty credential")
    return token


def ensure(run_dir: Path) -> str:
    """The existing token, or a new one if there is none yet."""
    try:
        return read(run_dir)
    except CredentialError:
        if _path(run_dir).exists():
            raise
        run_dir.mkdir(parents=True, exist_ok=True)
        return create(run_dir)


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"{_SCHEME} {token}"}


def middleware(token: str, open_paths: Iterable[str] = OPEN_PATHS) -> Middleware:
    """An aiohttp middleware answering 401 to any request for a path outside ``open_paths``
    that does not carry the token (deny by default: a new endpoint is protected)."""
    expected = f"{_SCHEME} {token}".encode()
    allowed = frozenset(open_paths)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in allowed:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not given:
            return _refused("this endpoint needs the mesh's credential")
        if not hmac.compare_digest(given, expected):
            return _refused("wrong credential")
        return await handler(request)

    return check


def _refused(reason: str) -> web.Response:
    return web.json_response(
        {
            "error": f"{reason}: send 'Authorization: Bearer <token>' with the token from "
            f"the run directory's {CREDENTIAL_FILE} file (mode 0600), as the grpcmesh CLI does"
        },
        status=401,
        headers={"WWW-Authenticate": _SCHEME},
    )


NODE_TOKEN_METADATA = "authorization"
"""The gRPC metadata key a node's token travels in (value ``Bearer <node token>``)."""
NODE_TOKEN_AUDIENCE = "grpcmesh-xds"
"""A node token's ``aud``: what it is for, so no other token signed with the credential is one."""
NODE_TOKEN_LIFETIME_S = 365 * 24 * 3600
"""How long a node token is valid from when ``grpcmesh up`` renders it. The credential is new
at every ``up``, which is what really ends a token; a long ``exp`` only bounds a mesh left up."""
_JWT_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_b64(document: Mapping[str, object]) -> str:
    return _b64(json.dumps(document, separators=(",", ":"), sort_keys=True).encode())


def _signature(token: str, signing_input: str) -> bytes:
    return hmac.new(token.encode(), signing_input.encode(), hashlib.sha256).digest()


def node_token_expiry(now: float | None = None) -> int:
    """The ``exp`` (Unix seconds) of tokens rendered at ``now`` (default: the current time)."""
    return int(time.time() if now is None else now) + NODE_TOKEN_LIFETIME_S


def node_token(token: str, node_id: str, *, expires: int | None = None) -> str:
    """The xDS token (a JWT, HS256) of ``node_id`` in the mesh whose credential is ``token``,
    valid until ``expires`` (Unix seconds; default ``node_token_expiry()``). The same inputs
    give the same token, so a plan stays a function of its settings."""
    exp = node_token_expiry() if expires is None else expires
    claims = {
        "aud": NODE_TOKEN_AUDIENCE,
        "exp": exp,
        "iat": exp - NODE_TOKEN_LIFETIME_S,
        "sub": node_id,
    }
    signing_input = f"{_json_b64(_JWT_HEADER)}.{_json_b64(claims)}"
    return f"{signing_input}.{_b64(_signature(token, signing_input))}"


def node_metadata(token: str, node_id: str, *, expires: int | None = None) -> dict[str, str]:
    """The ADS call metadata proving ``node_id`` (what an Envoy bootstrap's
    ``initial_metadata`` holds, and what gRPC sends from a ``jwt_token_file``)."""
    return {NODE_TOKEN_METADATA: f"{_SCHEME} {node_token(token, node_id, expires=expires)}"}


class NodeTokens:
    """The local control plane's ``NodeAuthenticator``: a caller is the node whose token it
    sends (signed with the mesh's credential, for this audience, not expired by ``clock``), and
    may ask for that node's configuration alone."""

    def __init__(self, token: str, *, clock: Callable[[], float] = time.time) -> None:
        self._token = token
        self._clock = clock

    async def authenticate(self, metadata: Mapping[str, str]) -> str | None:
        scheme, _, presented = metadata.get(NODE_TOKEN_METADATA, "").partition(" ")
        parts = presented.strip().split(".")
        if scheme != _SCHEME or len(parts) != 3:
            return None
        header, claims, signature = parts
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            return None
        # The signature first: nothing an unsigned token says is parsed.
        if not hmac.compare_digest(given, _signature(self._token, f"{header}.{claims}")):
            return None
        try:
            if json.loads(_unb64(header)) != _JWT_HEADER:
                return None
            document = json.loads(_unb64(claims))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(document, dict):
            return None
        node_id, exp = document.get("sub"), document.get("exp")
        if document.get("aud") != NODE_TOKEN_AUDIENCE or not isinstance(node_id, str):
            return None
        if isinstance(exp, bool) or not isinstance(exp, int) or exp <= self._clock():
            return None
        return node_id

    def permits(self, identity: str, node_id: str) -> bool:
        return identity == node_id
