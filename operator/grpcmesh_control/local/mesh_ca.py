"""The mesh root in local mode: files in the state directory, readable by the user only.

``<state>/ca/`` holds ``tls.crt``, ``tls.key`` and ``ca.crt`` in the same layout as the
cluster's Secret (``cluster.objects.mesh_ca``), so a user's own intermediate is brought the
same way: put the three files there before ``grpcmesh up``. The directory is 0700 and the key
0600. It is created once, in a temporary directory renamed into place, so two processes
starting together agree on one root (the loser of the rename reads the winner's).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

from grpcmesh_control.mesh.ca import CaError, CertificateAuthority

__all__ = ["CA_DIR", "CA_ROOT_FILE", "load_or_create_mesh_ca"]

CA_DIR = "ca"
CA_ROOT_FILE = "ca.crt"
"""The mesh root(s), PEM: public; what the Envoys trust the xDS server's certificate with."""
_CERT, _KEY, _ROOT = "tls.crt", "tls.key", CA_ROOT_FILE


def load_or_create_mesh_ca(state: Path, now: dt.datetime) -> CertificateAuthority:
    """The CA in ``state/ca``, creating a self-signed root there if the directory is absent.
    ``CaError`` naming the file when what is there cannot serve (never overwritten)."""
    directory = state / CA_DIR
    if not directory.exists():
        _create(state, directory, now)
    return _load(directory)


def _load(directory: Path) -> CertificateAuthority:
    try:
        cert, key = (directory / _CERT).read_bytes(), (directory / _KEY).read_bytes()
    except FileNotFoundError as exc:
        raise CaError(f"{exc.filename}: missing (the CA needs {_CERT} and {_KEY})") from exc
    if (directory / _KEY).stat().st_mode & 0o077:
        raise CaError(f"{directory / _KEY}: readable by others; chmod 600 it")
    root = directory / _ROOT
    try:
        return CertificateAuthority.from_pem(cert, key, root.read_bytes() if root.exists() else b"")
    except CaError as exc:
        raise CaError(f"{directory}: {exc}") from exc


def _create(state: Path, directory: Path, now: dt.datetime) -> None:
    state.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create_root(now)
    cert, key, root = ca.pem()
    staging = Path(tempfile.mkdtemp(prefix=".ca-", dir=state))  # 0700
    try:
        fd = os.open(staging / _KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(key)
        (staging / _CERT).write_bytes(cert)
        (staging / _ROOT).write_bytes(root)
        try:
            staging.rename(directory)
        except OSError:
            if not directory.exists():
                raise  # not a lost race: something else is wrong
    finally:
        shutil.rmtree(staging, ignore_errors=True)
