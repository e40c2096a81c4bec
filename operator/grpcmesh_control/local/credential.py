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
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.mesh.errors import MeshError

__all__ = [
    "CREDENTIAL_FILE",
    "FILE_MODE",
    "OPEN_PATHS",
    "CredentialError",
    "create",
    "ensure",
    "headers",
    "middleware",
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


def create(run_dir: Path) -> str:
    """A new random token written to ``RUN/credential`` (mode 0600, replacing any old one)."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
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
