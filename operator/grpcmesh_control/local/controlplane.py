"""The local-mode control plane process: ADS over gRPC, the file watcher, the admin HTTP API.

``ControlPlane.run`` owns one TaskGroup (publisher debounce loop, file watcher, gRPC server) and
stops everything it started when cancelled. ``serve`` is the entry the CLI wires to
``grpcmesh control-plane`` (also ``python -m grpcmesh_control control-plane``, as the local
launcher starts it). The xDS host itself (cache, publisher, ADS, read-only HTTP) is
``runtime.host.XdsHost``, which the cluster operator runs too.

Startup order: read the run directory and build (so the first Envoy request is answered with
complete config), bind both ports, then write ``ready_file`` (``{"xds_address",
"admin_address", "xds_port", "admin_port", "pid"}``), which lets a launcher pass port 0.
Restart safety: all state is in files and versions are content hashes, so a restarted control
plane serves the versions it served before; reconnecting Envoys ACK them without a change.

mTLS (on by default): the mesh CA is loaded from (or created in) ``<state>/ca``
(``local.mesh_ca``), and every sidecar speaks mutual TLS with a certificate issued over SDS
(``mesh.certificates``). ``/ca/rotation`` rotates the root in steps (``local.rotation``,
``grpcmesh ca rotate``), the state kept in the state directory so a restart resumes it.
``certificates_from_env`` reads the knobs the operator reads too:
``GRPCMESH_TRUST_DOMAIN``, ``GRPCMESH_WORKLOAD_CERT_TTL`` (a duration, 24h by default),
``GRPCMESH_CERT_RENEW_FRACTION`` (0.5); ``GRPCMESH_MTLS=off`` runs the sidecars in plaintext
(a benchmark's baseline).

Secured xDS (``secure_xds``, ``--secure-xds``; what ``grpcmesh up`` runs): an ADS stream is
served only to an Envoy or proxyless app sending its node token (``local.credential.node_token``,
a JWT signed with the run directory's credential; the launcher renders it into each Envoy's
bootstrap and each proxyless app's token file), and only its own node's configuration. ADS is
then served over TLS (with mTLS off too) with a certificate for ``host`` issued by the mesh CA
at start (valid ``XDS_SERVING_VALIDITY``).

Gateway TLS (``gateway_tls``, ``--ingress-tls-cert``/``--ingress-tls-key`` and optionally
``--ingress-client-ca``): the ingress listener serves TLS to outside clients with the
certificate in those files, delivered over SDS (``local.gateway_tls``); the files are polled
like the resources and a changed certificate is served without a restart. Without them the
ingress listener stays plaintext.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from grpcmesh_control.host.xds_host import XdsHost, join_host_port
from grpcmesh_control.local import credential
from grpcmesh_control.local.admin import apply_route, delete_route
from grpcmesh_control.local.atomic import write_atomically
from grpcmesh_control.local.gateway_tls import GatewayTlsFiles
from grpcmesh_control.local.mesh_ca import MeshAuthority, load_mesh_authority
from grpcmesh_control.local.rollout import route_to_ready
from grpcmesh_control.local.rotation import RootRotation, rotation_routes
from grpcmesh_control.local.sources import RESOURCES_DIR, ApplyPlan
from grpcmesh_control.local.sources.descriptors import (
    descriptor_set_name_error,
    local_protos,
    read_descriptor_sets,
)
from grpcmesh_control.local.watcher import DEFAULT_POLL_INTERVAL, FileSources
from grpcmesh_control.mesh.catalogs import ProtoSet
from grpcmesh_control.mesh.certificates import CertificateSettings, certificate_settings_from_env
from grpcmesh_control.mesh.clock import Clock, SystemClock
from grpcmesh_control.mesh.errors import FieldError, InvalidResource, InvalidResourceSet
from grpcmesh_control.mesh.gateway_tls import GatewayTlsError
from grpcmesh_control.mesh.model import Endpoint, MeshService, MethodCatalog
from grpcmesh_control.mesh.publisher import DEFAULT_MAX_DELAY, DEFAULT_WINDOW
from grpcmesh_control.mesh.translate.naming import LOCALHOST

__all__ = [
    "BoundAddresses",
    "ControlPlane",
    "ControlPlaneSettings",
    "certificates_from_env",
    "run_control_plane",
    "serve",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlPlaneSettings:
    """How the control plane runs. Ports 0 pick free ones (see ``ready_file``)."""

    state_dir: Path
    """The run directory: ``resources/*.yaml`` and ``endpoints.json`` are read from it."""
    xds_port: int = 0
    admin_port: int = 0
    host: str = LOCALHOST
    """Both servers bind here. Loopback by default: the admin API can change the mesh."""
    ready_file: Path | None = None
    """Written (atomically) once both ports listen; removed on a clean stop."""
    poll_interval: float = DEFAULT_POLL_INTERVAL
    """Seconds between polls of the run directory (100 ms)."""
    debounce_window: float = DEFAULT_WINDOW
    """Quiet time before a rebuild (50 ms)."""
    debounce_max_delay: float = DEFAULT_MAX_DELAY
    """Longest a rebuild waits while updates keep coming (500 ms)."""
    stop_grace: float = 1.0
    """Seconds in-flight ADS streams get when stopping (Envoys reconnect elsewhere anyway)."""
    certificates: CertificateSettings | None = field(default_factory=CertificateSettings)
    """Workload certificates, with mTLS between sidecars; None: plaintext between them (the
    mesh CA is still loaded for the xDS server's certificate with ``secure_xds``)."""
    secure_xds: bool = False
    """Serve ADS only to nodes proving their id with their node token, over TLS (module
    docstring)."""
    gateway_tls: GatewayTlsFiles | None = None
    """The ingress listener's certificate for outside clients; None: plaintext."""


XDS_SERVING_VALIDITY = dt.timedelta(days=30)
"""How long the xDS server's certificate is valid: it is issued anew at each start, and a local
control plane lives as long as its ``grpcmesh up``."""


_OFF = ("off", "false", "0", "no")


def certificates_from_env(environ: Mapping[str, str]) -> CertificateSettings | None:
    """The ``GRPCMESH_*`` certificate knobs (module docstring); None with mTLS off.
    ``ValueError`` naming the variable when one is not valid."""
    if environ.get("GRPCMESH_MTLS", "").strip().lower() in _OFF:
        return None
    return certificate_settings_from_env(environ)


@dataclass(frozen=True)
class BoundAddresses:
    host: str
    xds_port: int
    admin_port: int

    @property
    def xds_address(self) -> str:
        return join_host_port(self.host, self.xds_port)

    @property
    def admin_address(self) -> str:
        return join_host_port(self.host, self.admin_port)


class ControlPlane:
    """Local mode's control plane: the xDS host fed from the run directory's files, plus
    ``POST /apply``. The parts are attributes (``host``, ``cache``, ``publisher``, ``sources``,
    ``metrics``), for tests and debugging.

    The protos it knows (``protos``; ``catalog`` is theirs unless given) are the reference set
    and the descriptor sets (``*.binpb``) in the run directory's ``resources/``, polled like the
    resources: a set added or changed there changes retries, method checks and reflection
    without a restart (``reload_protos``)."""

    def __init__(
        self,
        settings: ControlPlaneSettings,
        *,
        catalog: MethodCatalog | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._sets = read_descriptor_sets(settings.state_dir / RESOURCES_DIR)
        self.protos: ProtoSet = local_protos(self._sets, where=f"{RESOURCES_DIR}/")
        self._protos_problems: tuple[str, ...] = ()
        self._fixed_catalog = catalog is not None
        catalog = catalog if catalog is not None else self.protos.catalog
        # The mesh CA issues the sidecars' certificates (mTLS) and the xDS server's own: ADS is
        # TLS whenever it is secured, mTLS or not (a proxyless app's gRPC sends its token over
        # TLS only).
        ca = None
        authority = None
        if settings.certificates is not None or settings.secure_xds:
            authority = load_mesh_authority(settings.state_dir, dt.datetime.now(dt.UTC))
            ca = authority.signer
        self.host = XdsHost(
            catalog,
            clock=self.clock,
            window=settings.debounce_window,
            max_delay=settings.debounce_max_delay,
            problems=lambda: [
                *self.sources.problems,
                *self._protos_problems,
                *self._gateway_problems,
            ],
            origin_of=lambda svc: self.sources.resources.file_of(svc.key),
            protos=lambda: self.protos,
            ca=None if settings.certificates is None else ca,
            certificates=settings.certificates,
            authenticator=(
                credential.NodeTokens(credential.ensure(settings.state_dir))
                if settings.secure_xds
                else None
            ),
        )
        self._gateway_problems: tuple[str, ...] = ()
        self._gateway_read: tuple[bytes, bytes, bytes | None] | None = None
        if settings.gateway_tls is not None:  # GatewayTlsError (a ValueError) names the file
            self._gateway_read = settings.gateway_tls.contents()
            certificate = settings.gateway_tls.check(self._gateway_read)
            self.host.use_gateway_tls(certificate.tls, certificate)
        self._xds_tls: tuple[bytes, bytes] | None = None
        self.rotation: RootRotation | None = None
        """The mesh root's rotation (``local.rotation``); None without mTLS."""
        if self.host.certificates is not None:
            self.rotation = RootRotation(
                settings.state_dir, self.host.certificates, on_change=self._serve_xds_with
            )
        elif authority is not None:  # ADS over TLS without mTLS: the CA serves ADS alone
            self._serve_xds_with(authority)
        self.metrics, self.cache, self.publisher = (
            self.host.metrics,
            self.host.cache,
            self.host.publisher,
        )
        self.sources = FileSources(settings.state_dir, self._update, catalog=catalog)
        self.metrics.observe(cache=self.cache, source_problems=lambda: len(self.sources.problems))

    def _serve_xds_with(self, authority: MeshAuthority) -> None:
        """(Re-)issue the xDS server's certificate from the CA signing now: Envoys starting
        later trust the bundle of ``authority`` (``ca-bundle.crt``), which holds its root."""
        if not self.settings.secure_xds:
            return
        issued = authority.signer.issue_serving(
            [self.settings.host],
            dt.datetime.now(dt.UTC),
            validity=XDS_SERVING_VALIDITY,
            common_name="grpcmesh xDS",
        )
        self._xds_tls = (issued.key_pem(), issued.cert_chain_pem())

    def _current_xds_tls(self) -> tuple[bytes, bytes]:
        assert self._xds_tls is not None
        return self._xds_tls

    def reload_protos(self) -> bool:
        """Read the descriptor sets again; when they changed and are valid, use them (the
        resources are validated again and the mesh rebuilt). Returns whether they were used.
        An invalid set is a problem in ``/status``; the last valid protos stay."""
        try:
            sets = read_descriptor_sets(self.settings.state_dir / RESOURCES_DIR)
        except OSError:  # replaced between listing and reading: next poll
            return False
        if sets == self._sets:
            return False
        self._sets = sets
        try:
            protos = local_protos(sets, where=f"{RESOURCES_DIR}/")
        except InvalidResourceSet as exc:
            self._protos_problems = tuple(str(p) for p in exc.problems)
            log.warning("invalid descriptor sets, keeping the last valid protos:\n%s", exc)
            return False
        self._protos_problems = ()
        self.protos = protos
        log.info("protos: %d gRPC services", len(protos.catalog.service_names))
        if not self._fixed_catalog:
            self.sources.set_catalog(protos.catalog)
            self.publisher.set_catalog(protos.catalog)
            self.sources.reload()
        return True

    def apply(
        self, filename: str, content: bytes, descriptors: Mapping[str, bytes] | None = None
    ) -> ApplyPlan:
        """``POST /apply``: the MeshService file ``content`` as ``resources/<filename>``, with
        the descriptor sets ``descriptors`` (file name -> ``FileDescriptorSet``) its services'
        protos are in. All is validated first, together with what the mesh has (the sets
        with ``local_protos``, as ``up`` does; the file against the protos they make); then the
        sets are written to ``resources/`` (one of the same name is replaced) and used, and
        then the file. Raises ``InvalidResourceSet`` naming the file, changing nothing."""
        descriptors = descriptors or {}
        catalog = None
        if descriptors:
            named = [(n, descriptor_set_name_error(n)) for n in sorted(descriptors)]
            bad = [InvalidResource(n, [FieldError("", e)]) for n, e in named if e is not None]
            if bad:
                raise InvalidResourceSet(bad)
            resources = self.settings.state_dir / RESOURCES_DIR
            protos = local_protos({**read_descriptor_sets(resources), **descriptors})
            catalog = None if self._fixed_catalog else protos.catalog
        plan = self.sources.plan(filename, content, catalog=catalog)
        if descriptors:
            resources.mkdir(parents=True, exist_ok=True)
            for name, data in descriptors.items():
                write_atomically(resources / name, data)
            self.reload_protos()
            log.info("descriptor sets applied: %s", ", ".join(sorted(descriptors)))
        return self.sources.write(plan)

    def reload_gateway_tls(self) -> bool:
        """Read the gateway's certificate files again; serve what they hold when it changed
        and checks out (True). A file that does not is a problem in ``/status``; the last good
        certificate stays."""
        files, gateway = self.settings.gateway_tls, self.host.gateway
        if files is None or gateway is None:
            return False
        try:
            contents = files.contents()
            if contents == self._gateway_read:  # polled often: parse only what changed
                return False
            self._gateway_read = contents
            changed = gateway.update(files.check(contents))
        except GatewayTlsError as exc:
            problem = f"ingress TLS: {exc}; serving the previous certificate"
            if self._gateway_problems != (problem,):
                log.warning("%s", problem)
            self._gateway_problems = (problem,)
            return False
        self._gateway_problems = ()
        return changed

    async def _watch_protos(self) -> None:
        while True:
            await self.clock.sleep(self.settings.poll_interval)
            self.reload_protos()
            self.reload_gateway_tls()

    def _update(
        self, services: tuple[MeshService, ...], endpoints: Mapping[str, tuple[Endpoint, ...]]
    ) -> None:
        """Publish what the files say, routing each version's share only once it is ready."""
        self.publisher.update(route_to_ready(services, endpoints), endpoints)

    def http_app(self) -> web.Application:
        """The xDS host's endpoints plus ``POST /apply``; all but ``credential.OPEN_PATHS``
        need the run directory's credential (created here if the launcher did not)."""
        app = self.host.http_app(
            [
                apply_route(self.apply, self.publisher),
                delete_route(self.sources, self.publisher),
                *rotation_routes(self.rotation),
            ]
        )
        app.middlewares.append(credential.middleware(credential.ensure(self.settings.state_dir)))
        return app

    async def run(self, on_ready: Callable[[BoundAddresses], None] | None = None) -> None:
        """Serve until cancelled. Raises ``OSError`` if a port cannot be bound."""
        settings = self.settings
        self.sources.reload()
        self.publisher.rebuild()
        ready_written = False
        try:
            async with self.host.serving(
                self.http_app(),
                xds_host=settings.host,
                xds_port=settings.xds_port,
                http_host=settings.host,
                http_port=settings.admin_port,
                stop_grace=settings.stop_grace,
                tls=None if self._xds_tls is None else self._current_xds_tls,
            ) as ports:
                assert ports.http_port is not None
                bound = BoundAddresses(settings.host, ports.xds_port, ports.http_port)
                log.info(
                    "control plane serving: xDS %s, admin http://%s, state %s",
                    bound.xds_address,
                    bound.admin_address,
                    settings.state_dir,
                )
                if settings.ready_file is not None:
                    _write_ready_file(settings.ready_file, bound)
                    ready_written = True
                if on_ready is not None:
                    on_ready(bound)
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self.publisher.run(), name="publisher")
                    tasks.create_task(
                        self.sources.watch(self.clock, settings.poll_interval), name="watcher"
                    )
                    tasks.create_task(self.host.wait_for_termination(), name="xds-server")
                    tasks.create_task(self._watch_protos(), name="protos")
        finally:
            if ready_written and settings.ready_file is not None:
                settings.ready_file.unlink(missing_ok=True)


async def serve(
    state_dir: Path,
    xds_port: int,
    admin_port: int,
    host: str = LOCALHOST,
    ready_file: Path | None = None,
    *,
    secure_xds: bool = False,
    gateway_tls: GatewayTlsFiles | None = None,
) -> None:
    """Run the control plane on ``state_dir`` until cancelled (``grpcmesh control-plane``)."""
    await run_control_plane(
        ControlPlaneSettings(
            state_dir=state_dir,
            xds_port=xds_port,
            admin_port=admin_port,
            host=host,
            ready_file=ready_file,
            certificates=certificates_from_env(os.environ),
            secure_xds=secure_xds,
            gateway_tls=gateway_tls,
        )
    )


async def run_control_plane(settings: ControlPlaneSettings) -> None:
    """Run the control plane with every knob of ``ControlPlaneSettings``, until cancelled."""
    await ControlPlane(settings).run()


def _write_ready_file(path: Path, bound: BoundAddresses) -> None:
    document = {
        "xds_address": bound.xds_address,
        "admin_address": bound.admin_address,
        "xds_port": bound.xds_port,
        "admin_port": bound.admin_port,
        "pid": os.getpid(),
    }
    write_atomically(path, json.dumps(document) + "\n")
