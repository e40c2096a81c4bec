"""Operator-managed webhook TLS, at the edge: keep the Secret current, write the files kopf's
webhook server loads, and put the CA into the webhook configurations' ``caBundle``.

Runs once at operator start, before kopf serves. Every replica runs it; they agree through the
API server: the Secret is created once (a second create gets 409 and reads the winner's) and
renewed with a ``resourceVersion`` precondition (a racing renewal gets 409 and re-reads).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from grpcmesh_control.cluster.controller.client import ApiError, Conflict, KubeClient
from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.objects.kinds import (
    MUTATING_WEBHOOK_CONFIGURATION,
    SECRET,
    VALIDATING_WEBHOOK_CONFIGURATION,
    Kind,
)
from grpcmesh_control.cluster.objects.webhook_tls import (
    TLS_CERT,
    TLS_KEY,
    TlsBundle,
    ca_bundle_patch,
    ca_reusable,
    issue,
    renewal_reason,
    secret_body,
)

__all__ = ["WebhookCertificates", "ensure_webhook_tls"]

log = logging.getLogger(__name__)

_ATTEMPTS = 5  # each lost race costs one more read; more than a few means something is wrong
_JSON_PATCH = "application/json-patch+json"


async def ensure_webhook_tls(
    client: KubeClient,
    *,
    namespace: str,
    secret: str,
    dns_names: Sequence[str],
    configurations: Sequence[str],
    directory: Path,
    now: dt.datetime,
) -> tuple[Path, Path]:
    """Make sure Secret ``namespace/secret`` holds a certificate for ``dns_names`` valid well
    past ``now``, write it to ``directory`` and install its CA in the Validating and Mutating
    webhook configurations named ``configurations``. Returns (certificate, key) paths."""
    bundle = await _current_bundle(client, namespace, secret, dns_names, now)
    cert, key = _write_files(bundle, directory)
    for name in configurations:
        for kind in (VALIDATING_WEBHOOK_CONFIGURATION, MUTATING_WEBHOOK_CONFIGURATION):
            await _install_ca(client, kind, name, bundle.ca_cert)
    return cert, key


def _write_files(bundle: TlsBundle, directory: Path) -> tuple[Path, Path]:
    """``directory/current/tls.{crt,key}``. A renewal writes a new version directory and swaps
    the ``current`` symlink in one rename (as the kubelet updates mounted Secrets), so kopf's
    webhook server, which reloads when the files' content changes, never reads a new
    certificate beside an old key. Synchronous on purpose: small files, rarely."""
    directory.mkdir(parents=True, exist_ok=True)
    current = directory / "current"
    cert, key = current / TLS_CERT, current / TLS_KEY
    if (
        cert.exists()
        and key.exists()
        and (cert.read_bytes(), key.read_bytes())
        == (
            bundle.cert,
            bundle.key,
        )
    ):
        return cert, key
    version = Path(tempfile.mkdtemp(prefix="v-", dir=directory))
    (version / TLS_KEY).touch(mode=0o600)
    (version / TLS_KEY).write_bytes(bundle.key)
    (version / TLS_CERT).write_bytes(bundle.cert)
    link = directory / f".current-{version.name}"
    link.symlink_to(version.name)
    previous = current.resolve() if current.is_symlink() else None
    link.replace(current)
    if previous is not None and previous != version:
        shutil.rmtree(previous, ignore_errors=True)
    return cert, key


async def _current_bundle(
    client: KubeClient,
    namespace: str,
    secret: str,
    dns_names: Sequence[str],
    now: dt.datetime,
) -> TlsBundle:
    for _ in range(_ATTEMPTS):
        stored = await client.get(SECRET, namespace, secret)
        bundle = TlsBundle.from_secret(stored)
        reason = renewal_reason(bundle, dns_names, now)
        if reason is None and bundle is not None:
            return bundle
        fresh = issue(dns_names, now, ca=bundle if ca_reusable(bundle, now) else None)
        body = secret_body(fresh, secret, namespace)
        try:
            if stored is None:
                await client.create(SECRET, body)
            else:
                version = (stored.get("metadata") or {}).get("resourceVersion")
                await client.patch(
                    SECRET,
                    namespace,
                    secret,
                    {"metadata": {"resourceVersion": version}, "data": body["data"]},
                )
        except Conflict:
            continue  # another replica wrote it first: use theirs
        log.info("webhook certificate issued into secret %s/%s: %s", namespace, secret, reason)
        return fresh
    raise ApiError(409, f"secret {namespace}/{secret} kept changing while being renewed")


async def _install_ca(client: KubeClient, kind: Kind, name: str, ca_cert: bytes) -> None:
    for _ in range(_ATTEMPTS):
        configuration = await client.get(kind, None, name)
        if configuration is None:
            log.warning("%s %s not found: its caBundle is not managed", kind.kind, name)
            return
        ops = ca_bundle_patch(configuration, ca_cert)
        if not ops:
            return
        try:
            await client.patch(kind, None, name, ops, content_type=_JSON_PATCH)
        except ApiError as exc:
            if exc.status not in (409, 422):  # 422: a guarding `test` failed (reordered)
                raise
            continue
        log.info("caBundle installed in %s %s", kind.kind, name)
        return
    raise ApiError(409, f"{kind.kind} {name} kept changing while its caBundle was installed")


class WebhookCertificates:
    """The files kopf's webhook server loads: given (``webhook_certfile``/``webhook_pkeyfile``,
    e.g. from cert-manager) or, with managed TLS, issued into a private temporary folder at
    start (``ensure``) and re-checked by every replica (``renew_forever``): one renews the
    Secret (the others get a 409 and read theirs), and each rewrites its files, which kopf's
    webhook server notices and reloads."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self._settings = settings
        self.directory: Path | None = None
        """Where a managed certificate is written (None: not managed, or not yet)."""
        self.files: tuple[Path, Path] | None = None
        if settings.webhook_certfile is not None and settings.webhook_pkeyfile is not None:
            self.files = (settings.webhook_certfile, settings.webhook_pkeyfile)

    async def ensure(self, client: KubeClient) -> tuple[Path, Path]:
        settings = self._settings
        assert settings.webhook_secret is not None and settings.webhook_host is not None
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="grpcmesh-webhook-"))
        self.files = await ensure_webhook_tls(
            client,
            namespace=settings.namespace,
            secret=settings.webhook_secret,
            dns_names=[settings.webhook_host],
            configurations=settings.webhook_configurations,
            directory=self.directory,
            now=dt.datetime.now(dt.UTC),
        )
        return self.files

    async def renew_forever(self, client: KubeClient) -> None:
        while True:
            await asyncio.sleep(self._settings.webhook_renew_interval)
            try:
                await self.ensure(client)
            except ApiError as exc:
                log.warning("webhook certificate check failed (retried later): %s", exc)
