"""The mesh root in local mode: files in the state directory, readable by the user only.

``<state>/ca/`` holds ``tls.crt``, ``tls.key`` and ``ca.crt`` in the same layout as the
cluster's Secret (``cluster.objects.mesh_ca``), so a user's own intermediate is brought the
same way: put the three files there before ``grpcmesh up``. The directory is 0700 and the key
0600. It is created once, in a temporary directory renamed into place, so two processes
starting together agree on one root (the loser of the rename reads the winner's).

Root rotation (``grpcmesh ca rotate``, driven through the control plane's ``/ca/rotation``)
keeps its progress here too, so a crash at any point leaves a state the next start completes:

=================  ==========================================================================
``ca-next/``       the new CA, same three files, created whole by one rename (``stage``)
``ca-rotation``    the phase, one word, replaced atomically: ``trust`` (both roots trusted,
                   the old one signs), ``sign`` (both trusted, the new one signs),
                   ``finish`` (the new CA is being moved into ``ca/``; the old root leaves)
``ca-bundle.crt``  the roots trusted now (PEM), what the Envoys' bootstraps trust the xDS
                   server with; rewritten atomically whenever the phase changes
=================  ==========================================================================

The phase file is written before anything acts on it, so what the Envoys were told never runs
ahead of the disk. ``finish`` is two renames (``ca`` -> ``ca-retired``, ``ca-next`` -> ``ca``),
then the retired directory and the phase file are removed: ``load_mesh_authority`` (and
``load_or_create_mesh_ca``, so the launcher never creates a fresh root in the gap) completes an
interrupted ``finish`` before reading anything.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.mesh.ca import CaError, CertificateAuthority, trust_bundle

__all__ = [
    "BUNDLE_FILE",
    "CA_DIR",
    "CA_ROOT_FILE",
    "MeshAuthority",
    "RotationPhase",
    "load_mesh_authority",
    "load_or_create_mesh_ca",
    "read_ca",
    "set_phase",
    "stage_next_ca",
    "write_bundle",
]

CA_DIR = "ca"
CA_ROOT_FILE = "ca.crt"
"""The mesh root(s), PEM: public; what the Envoys trust the xDS server's certificate with."""
NEXT_DIR = "ca-next"
RETIRED_DIR = "ca-retired"
PHASE_FILE = "ca-rotation"
BUNDLE_FILE = "ca-bundle.crt"
_CERT, _KEY, _ROOT = "tls.crt", "tls.key", CA_ROOT_FILE
_SHA256 = hashes.SHA256()


class RotationPhase(StrEnum):
    TRUST = "trust"
    """Both roots trusted; the old CA still signs. Next: every node ACKs the new bundle."""
    SIGN = "sign"
    """Both roots trusted; the new CA signs, every certificate re-issued from it."""
    FINISH = "finish"
    """The new CA moves into ``ca/``; the old root is dropped from the bundle."""


@dataclass(frozen=True)
class MeshAuthority:
    """Who signs and what is trusted, as the state directory says now."""

    signer: CertificateAuthority
    roots: tuple[x509.Certificate, ...]
    """The trust bundle, the signer's root first."""
    phase: RotationPhase | None
    """None: no rotation in progress (``roots`` is the signer's root alone)."""
    old: CertificateAuthority | None = None
    """During a rotation: the CA being replaced (``ca/``)."""
    new: CertificateAuthority | None = None
    """During a rotation: the CA replacing it (``ca-next/``)."""

    def bundle(self, now: dt.datetime) -> bytes:
        return trust_bundle(self.roots, now)


def load_or_create_mesh_ca(state: Path, now: dt.datetime) -> CertificateAuthority:
    """The CA in ``state/ca``, creating a self-signed root there if the directory is absent.
    ``CaError`` naming the file when what is there cannot serve (never overwritten). Completes
    an interrupted rotation first (module docstring); during one, this is the signing CA."""
    return load_mesh_authority(state, now).signer


def load_mesh_authority(state: Path, now: dt.datetime) -> MeshAuthority:
    """The signer and trusted roots the state directory holds (module docstring), creating
    ``ca/`` with a new root when there is none, and completing an interrupted ``finish``."""
    phase = _read_phase(state)
    if phase is RotationPhase.FINISH:
        _complete_finish(state)
        phase = None
    directory = state / CA_DIR
    if not directory.exists():
        _create(state, directory, now)
    current = _load(directory)
    if phase is None:
        return MeshAuthority(current, (current.root,), None)
    staged = _load(state / NEXT_DIR)
    if phase is RotationPhase.TRUST:
        return MeshAuthority(current, (current.root, staged.root), phase, current, staged)
    return MeshAuthority(staged, (staged.root, current.root), phase, current, staged)


def stage_next_ca(state: Path, now: dt.datetime) -> CertificateAuthority:
    """The CA in ``ca-next/``, created with a new self-signed root if absent (a user's own
    next intermediate may be put there beforehand, as for ``ca/``)."""
    directory = state / NEXT_DIR
    if not directory.exists():
        _create(state, directory, now)
    staged = _load(directory)
    current = _load(state / CA_DIR)
    if staged.root.fingerprint(_SHA256) == current.root.fingerprint(_SHA256):
        raise CaError(f"{directory}: the same root as {state / CA_DIR}; nothing to rotate")
    return staged


def set_phase(state: Path, phase: RotationPhase) -> None:
    """Record ``phase`` (atomically); ``finish`` is then carried out at once."""
    write_atomically(state / PHASE_FILE, f"{phase.value}\n")
    if phase is RotationPhase.FINISH:
        _complete_finish(state)


def write_bundle(state: Path, authority: MeshAuthority, now: dt.datetime) -> Path:
    """Write the trusted roots to ``ca-bundle.crt`` (atomically); its path."""
    path = state / BUNDLE_FILE
    state.mkdir(parents=True, exist_ok=True)
    write_atomically(path, authority.bundle(now))
    return path


def _read_phase(state: Path) -> RotationPhase | None:
    try:
        text = (state / PHASE_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return RotationPhase(text)
    except ValueError:
        raise CaError(
            f"{state / PHASE_FILE}: {text!r} is not a rotation phase "
            f"({', '.join(p.value for p in RotationPhase)})"
        ) from None


def _complete_finish(state: Path) -> None:
    """``ca-next`` becomes ``ca``; idempotent, so a crash anywhere in it is finished by the
    next call."""
    current, staged, retired = state / CA_DIR, state / NEXT_DIR, state / RETIRED_DIR
    if staged.exists():
        if current.exists():
            shutil.rmtree(retired, ignore_errors=True)
            current.rename(retired)
        staged.rename(current)
    shutil.rmtree(retired, ignore_errors=True)
    (state / PHASE_FILE).unlink(missing_ok=True)


def read_ca(directory: Path) -> CertificateAuthority:
    """The CA in ``directory`` (``ca/`` or ``ca-next/``), read only: no rotation completed,
    nothing created (for tools and tests looking at a running mesh; the control plane is the
    one writer). ``CaError`` naming the file when it cannot serve."""
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


def _create(
    state: Path, directory: Path, now: dt.datetime, ca: CertificateAuthority | None = None
) -> None:
    state.mkdir(parents=True, exist_ok=True)
    ca = ca or CertificateAuthority.create_root(now)
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
