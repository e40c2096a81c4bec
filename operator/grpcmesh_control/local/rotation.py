"""Rotating the mesh root of a running local mesh, one phase at a time, never ahead of the nodes.

``RootRotation`` ties the state directory (``local.mesh_ca``: the phase and both CAs, on disk
first) to the workload certificates the control plane serves (``mesh.certificates``):

1. ``trust``: stage a new CA (``ca-next/``) and send every node a bundle of the old **and** new
   roots; the old CA still signs.
2. ``sign``: refused until every connected node has ACKed that bundle (``pending``); then the
   new CA signs and every node is issued a new certificate at once.
3. ``finish``: refused until every node has ACKed its new certificate; then the new CA becomes
   ``ca/``, the old one is deleted, and every node is sent the new root alone.

Each step is idempotent, so a client that lost its connection just asks again, and a control
plane that restarts reads the phase back from the disk. The HTTP side (``rotation_routes``)
is ``GET /ca/rotation`` (where it is, who has not ACKed yet) and ``POST /ca/rotation``
(``{"phase": "trust" | "sign" | "finish"}``; 409 and the nodes still pending when a step
would run ahead of them). Both need the mesh's credential, like ``/apply``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from grpcmesh_control.host.xds_host import json_response
from grpcmesh_control.local.clients import ControlPlaneClient
from grpcmesh_control.local.mesh_ca import (
    MeshAuthority,
    RotationPhase,
    load_mesh_authority,
    set_phase,
    stage_next_ca,
    write_bundle,
)
from grpcmesh_control.mesh.ca import CaError
from grpcmesh_control.mesh.certificates import WorkloadCertificates
from grpcmesh_control.mesh.errors import MeshError

__all__ = [
    "ROTATION_PATH",
    "STEPS",
    "RootRotation",
    "RotationRefused",
    "RotationTimeout",
    "describe_root",
    "rotate_root",
    "rotation_routes",
]

log = logging.getLogger(__name__)

ROTATION_PATH = "/ca/rotation"
STEPS = (RotationPhase.TRUST, RotationPhase.SIGN, RotationPhase.FINISH)


class RotationRefused(MeshError):
    """A step asked for out of order, or before the nodes caught up (the message says which)."""

    def __init__(self, message: str, pending: list[str] | None = None) -> None:
        super().__init__(message)
        self.pending = pending or []


class RotationTimeout(MeshError):
    """The nodes did not catch up in time; the rotation stays where it is, safe to resume."""


def describe_root(cert: x509.Certificate) -> dict[str, str]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


class RootRotation:
    """See the module docstring. ``on_change`` runs after each step changed the authority (the
    control plane re-issues its xDS serving certificate there)."""

    def __init__(
        self,
        state_dir: Path,
        certificates: WorkloadCertificates,
        *,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        on_change: Callable[[MeshAuthority], None] = lambda authority: None,
    ) -> None:
        self._state = state_dir
        self._certificates = certificates
        self._now = now
        self._on_change = on_change
        self.authority = load_mesh_authority(state_dir, now())
        self._apply(self.authority)

    def status(self) -> dict[str, Any]:
        certs = self._certificates
        return {
            "phase": None if self.authority.phase is None else self.authority.phase.value,
            "signer": describe_root(certs.ca.root),
            "roots": [describe_root(root) for root in certs.roots],
            "epoch": certs.epoch,
            "nodes": len(certs.all_held()),
            "pending": certs.pending(),
        }

    def advance(self, phase: RotationPhase) -> dict[str, Any]:
        """Take step ``phase`` (a step already taken is a no-op). ``RotationRefused`` when it
        would run ahead of the state or of the nodes."""
        current = self.authority.phase
        if phase is RotationPhase.TRUST:
            if current not in (None, RotationPhase.TRUST):
                raise RotationRefused(f"a rotation is in phase {current}; trust comes first")
            if current is None:
                stage_next_ca(self._state, self._now())
                set_phase(self._state, RotationPhase.TRUST)
        elif phase is RotationPhase.SIGN:
            if current is RotationPhase.TRUST:
                self._caught_up("every node trusts the new root")
                set_phase(self._state, RotationPhase.SIGN)
            elif current is not RotationPhase.SIGN:
                raise RotationRefused("no rotation in phase trust: start with phase trust")
        elif current is RotationPhase.SIGN:
            self._caught_up("every node holds a certificate from the new root")
            set_phase(self._state, RotationPhase.FINISH)
        elif current is not None:
            raise RotationRefused(f"a rotation in phase {current} cannot finish yet: sign first")
        before = self.authority.phase
        self.authority = load_mesh_authority(self._state, self._now())
        self._apply(self.authority)  # idempotent: a step asked again re-sends nothing
        if self.authority.phase != before:
            log.info("root rotation: %s done, phase now %s", phase, self.authority.phase)
        return self.status()

    def _caught_up(self, what: str) -> None:
        pending = self._certificates.pending()
        if pending:
            raise RotationRefused(
                f"not yet: {what} only once they ACK; waiting for {len(pending)} node(s): "
                + ", ".join(pending),
                pending,
            )

    def _apply(self, authority: MeshAuthority) -> None:
        now = self._now()
        self._certificates.set_authority(authority.signer, authority.roots)
        write_bundle(self._state, authority, now)
        self._on_change(authority)


def rotation_routes(rotation: RootRotation | None) -> list[web.RouteDef]:
    """``GET`` and ``POST /ca/rotation`` (module docstring); without a mesh CA (``rotation``
    None, ``GRPCMESH_MTLS=off``) both answer 404 saying so."""
    if rotation is None:

        async def no_ca(request: web.Request) -> web.Response:
            return json_response(
                {"error": "this mesh runs without a CA (GRPCMESH_MTLS=off): no root to rotate"},
                status=404,
            )

        return [web.get(ROTATION_PATH, no_ca), web.post(ROTATION_PATH, no_ca)]

    async def get(request: web.Request) -> web.Response:
        return json_response(rotation.status())

    async def post(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            phase = RotationPhase(body["phase"])
        except (ValueError, KeyError, TypeError):
            choices = ", ".join(p.value for p in RotationPhase)
            return json_response({"error": f'body: {{"phase": one of {choices}}}'}, status=400)
        try:
            return json_response(rotation.advance(phase))
        except RotationRefused as refused:
            return json_response(
                {"error": str(refused), "pending": refused.pending, **rotation.status()},
                status=409,
            )
        except (CaError, OSError) as failed:
            return json_response({"error": f"root rotation: {failed}"}, status=500)

    return [web.get(ROTATION_PATH, get), web.post(ROTATION_PATH, post)]


_WHAT = {
    RotationPhase.TRUST: "trust the old and the new root",
    RotationPhase.SIGN: "hold a certificate from the new root",
    RotationPhase.FINISH: "trust the new root alone",
}


async def rotate_root(
    client: ControlPlaneClient,
    *,
    until: RotationPhase = RotationPhase.FINISH,
    timeout_s: float = 120.0,
    poll_s: float = 0.2,
    report: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Take the rotation's steps from where it is through ``until`` (``grpcmesh ca rotate``),
    each once the control plane accepts it, then wait until every node ACKed the last one.
    Resumes a rotation left in ``trust`` or ``sign``; from no rotation, starts one.
    ``report`` gets one line per step taken and per change in the nodes awaited.
    ``RotationTimeout`` after ``timeout_s`` in all; ``RotationRefused`` for a step out of
    order (``until`` before where the rotation already is)."""
    deadline = time.monotonic() + timeout_s
    phase = (await client.rotation())["phase"]
    first = 0 if phase is None else STEPS.index(RotationPhase(phase))
    steps = STEPS[first : STEPS.index(until) + 1]
    if not steps:
        raise RotationRefused(f"the rotation is already in phase {phase}, past {until}")
    doc: dict[str, Any] = {}
    for step in steps:
        started = time.monotonic()
        doc = await _until_accepted(client, step, deadline, poll_s, report)
        report(f"{step}: taken ({time.monotonic() - started:.1f} s)")
        doc = await _until_caught_up(client, step, deadline, poll_s, report)
        report(
            f"{step}: all {doc['nodes']} node(s) {_WHAT[step]} ({time.monotonic() - started:.1f} s)"
        )
    return doc


async def _until_accepted(
    client: ControlPlaneClient,
    step: RotationPhase,
    deadline: float,
    poll_s: float,
    report: Callable[[str], None],
) -> dict[str, Any]:
    said: list[str] | None = None
    while True:
        accepted, doc = await client.rotate(step.value)
        if accepted:
            return doc
        pending = doc.get("pending") or []
        if not pending:
            raise RotationRefused(str(doc.get("error")))
        said = _say_pending(step, doc, pending, said, report)
        await _pause(deadline, poll_s, step, pending)


async def _until_caught_up(
    client: ControlPlaneClient,
    step: RotationPhase,
    deadline: float,
    poll_s: float,
    report: Callable[[str], None],
) -> dict[str, Any]:
    said: list[str] | None = None
    while True:
        doc = await client.rotation()
        pending = doc.get("pending") or []
        if not pending:
            return doc
        said = _say_pending(step, doc, pending, said, report)
        await _pause(deadline, poll_s, step, pending)


def _say_pending(
    step: RotationPhase,
    doc: dict[str, Any],
    pending: list[str],
    said: list[str] | None,
    report: Callable[[str], None],
) -> list[str]:
    if pending != said:
        caught_up = doc["nodes"] - len(pending)
        report(
            f"{step}: {caught_up}/{doc['nodes']} node(s) ACKed; waiting for " + ", ".join(pending)
        )
    return pending


async def _pause(deadline: float, poll_s: float, step: RotationPhase, pending: list[str]) -> None:
    if time.monotonic() >= deadline:
        raise RotationTimeout(
            f"{step}: {len(pending)} node(s) did not ACK in time: {', '.join(pending)}; the "
            "rotation stays in its current phase: run the command again to resume"
        )
    await asyncio.sleep(poll_s)
