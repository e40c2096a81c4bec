"""What local mode runs, as data: MeshServices + free ports -> a ``Plan`` (pure, no I/O).

For every MeshService with a workload, per version and per replica ``i`` of that version, the
plan holds the app (the version's command + args, by default ``spec.workload``'s, ``python``
replaced by the launcher's interpreter; its env ends with the kit's contract, ``mesh.appenv``),
its Envoy sidecar (node id ``sidecar~<svc>~<version>-<i>``, bootstrap with the ports in its node
metadata) and the app's ``config.yaml`` (``spec.config``); plus the ingress Envoy
(``ingress~gateway``) and the control plane. The launcher writes ``Plan.files()``, starts the
processes and renders ``endpoints.json``/``state.json`` from the plan (``documents``).

Run-state layout (``docs/design/local-mode.md``)::

    RUN/resources/*.yaml              MeshServices (the control plane's source of truth)
    RUN/endpoints.json, RUN/state.json
    RUN/control-plane.log
    RUN/ingress/{envoy.json,envoy.log,admin.sock}
    RUN/<svc>/data.db                 shared by the service's replicas, like one database
    RUN/<svc>/<replica>/{envoy.json,config.yaml,app.log,envoy.log,admin.sock}
    RUN/<svc>/<replica>/xds-token     a proxyless app's node token (secured xDS)

Each Envoy's admin interface is its ``admin.sock`` (mode 0600: only the user who started the
mesh can connect, so no other local user can ``/quitquitquit`` a sidecar); its TCP admin port
serves only ``bootstrap.READ_ONLY_PATHS`` (``/ready``, ``/stats``, ``/stats/prometheus``), which
is what the supervisor, the apps, ``status``/``top`` and Prometheus read.
    RUN/prometheus/{prometheus.yml,grpcmesh.rules.yaml,prometheus.log,data/}   (--prometheus)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any

import yaml

from grpcmesh_control.local import credential
from grpcmesh_control.local.gateway_tls import GatewayTlsFiles
from grpcmesh_control.mesh.appenv import AppEnv
from grpcmesh_control.mesh.errors import MeshError
from grpcmesh_control.mesh.model.mesh import MeshService, VersionTarget, Workload
from grpcmesh_control.mesh.translate.bootstrap import (
    READ_ONLY_PATHS,
    UNIX_PATH_MAX,
    envoy_command,
    render_bootstrap,
    xds_roots_sds_document,
)
from grpcmesh_control.mesh.translate.naming import (
    DEFAULT_TRACE_SAMPLING,
    LOCALHOST,
    NodeId,
    ProxyNode,
)
from grpcmesh_control.mesh.translate.proxyless import CALL_CREDS_GATE, grpc_bootstrap
from grpcmesh_control.observability.alerts import RULES_FILE_NAME
from grpcmesh_control.observability.scrape import ScrapeTargets, prometheus_config

__all__ = [
    "ADMIN_SOCKET",
    "DEFAULT_INGRESS_NAME",
    "FILE_MODE",
    "PORTS_PER_REPLICA",
    "XDS_ROOTS_SDS_FILE",
    "XDS_TOKEN_FILE",
    "ControlPlanePlan",
    "IngressPlan",
    "LocalSettings",
    "Plan",
    "PlanError",
    "ProcessSpec",
    "PrometheusPlan",
    "ReplicaPlan",
    "build_plan",
    "new_replicas",
    "ports_needed",
    "ports_of",
    "replan",
]

DEFAULT_INGRESS_NAME = "gateway"
ADMIN_SOCKET = "admin.sock"
XDS_TOKEN_FILE = "xds-token"
"""A proxyless app's node token, in its replica's directory (secured xDS)."""
XDS_ROOTS_SDS_FILE = "xds-roots.json"
"""Beside the bootstraps in the run directory: the file-based SDS of the xDS server's roots."""
PORTS_PER_REPLICA = 5  # app gRPC, app metrics, sidecar inbound, egress, admin
_FIXED_PORTS = 4  # control plane xDS + admin, ingress listener + admin
# First words of spec.workload.command that mean "a Python interpreter": locally that is the
# launcher's own, so the services import from the same environment.
_PYTHON_NAMES = frozenset({"python", "python3", "python3.11"})
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")


FILE_MODE = 0o600
"""The mode of the files a plan writes (``Plan.files``): a bootstrap holds a node token."""


class PlanError(MeshError, ValueError):
    """The resources cannot run in local mode; the message names the resource and field."""


@dataclass(frozen=True)
class LocalSettings:
    """How local mode runs things. Paths are given by the edge (``sys.executable``,
    ``find_envoy()``), so the plan stays a pure function of its inputs."""

    run_dir: Path
    python: str
    """Interpreter replacing ``python`` in commands, and running the control plane."""
    envoy: str
    """Path of the Envoy binary (never ``import envoy``: see TOOLING.md)."""
    envoy_concurrency: int = 1
    """Worker threads per Envoy: one is plenty for a loopback sidecar on a shared machine."""
    envoy_log_level: str = "warning"
    drain_seconds: float = 0.5
    """The apps' GRPCMESH_DRAIN_SECONDS: endpoints are marked not ready before the apps get
    SIGTERM, so a short drain suffices for callers' sidecars to see the EDS update."""
    ingress_name: str = DEFAULT_INGRESS_NAME
    prometheus: str | None = None
    """Path of a Prometheus binary to run beside the mesh, scraping it; None: no Prometheus."""
    scrape_interval: str = "1s"
    otlp_endpoint: str | None = None
    """host:port of an OTLP/gRPC collector: Envoys and apps send it spans; None: no tracing."""
    trace_sampling: float = DEFAULT_TRACE_SAMPLING
    """The mesh's one sampling ratio: every Envoy's ``random_sampling`` and every app's
    ``GRPCMESH_TRACE_SAMPLING_RATIO``."""
    access_logs: bool = True
    """Envoys write a JSON access log line per request into their envoy.log."""
    xds_credential: str | None = None
    """The mesh's credential (``local.credential``): each Envoy's bootstrap then carries its
    own node token, and each proxyless app's token is in its replica's ``xds-token`` file (the
    files must be written private), and the control plane runs with ``--secure-xds``, serving
    ADS only to nodes proving their id. None: ADS is open."""
    xds_trusted_ca: Path | None = None
    """The mesh roots (PEM file) the Envoys and proxyless apps verify the control plane's TLS
    certificate with (with ``xds_credential``); None: ADS in plaintext, which a proxyless app
    cannot use with a credential (gRPC sends call credentials over TLS only). Envoys read it
    through a file-based SDS document beside the bootstraps (``XDS_ROOTS_SDS_FILE``), so they
    pick up a root rotation's new bundle when the file is replaced."""
    xds_token_expires: int | None = None
    """The node tokens' ``exp`` (Unix seconds; the launcher sets it once per ``up``, so a
    replan renders the same tokens); None: ``credential.node_token_expiry()`` at each use."""
    ingress_tls: GatewayTlsFiles | None = None
    """The ingress's server certificate for outside clients (absolute paths: the control
    plane reads them and serves them over SDS); None: the ingress listener is plaintext."""


@dataclass(frozen=True)
class ProcessSpec:
    """One process: ``env`` holds only what the launcher adds to its own environment."""

    name: str
    argv: tuple[str, ...]
    log: Path
    cwd: Path
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ReplicaPlan:
    """One replica of one version: an app and its sidecar."""

    service: str
    version: str
    replica: str
    """``<version>-<i>``, unique within the service."""
    node_id: str
    dir: Path
    app_port: int
    metrics_port: int
    inbound_port: int
    egress_port: int
    admin_port: int
    config_path: Path
    config_text: str
    bootstrap_path: Path
    bootstrap: Mapping[str, Any]
    app: ProcessSpec
    sidecar: ProcessSpec
    xds_token_path: Path | None = None
    """A proxyless app's node token file (its gRPC bootstrap's ``jwt_token_file``), with a
    secured control plane; None otherwise."""
    xds_token: str | None = None
    """That file's content: the JWT alone, no newline (gRPC sends the file as it is)."""

    @property
    def key(self) -> str:
        """``<svc>/<replica>``: unique in the mesh (and the replica's directory under RUN)."""
        return f"{self.service}/{self.replica}"

    def files(self) -> dict[Path, str]:
        """The replica's files, written before it starts (mode ``FILE_MODE``)."""
        out = {self.bootstrap_path: _json(self.bootstrap), self.config_path: self.config_text}
        if self.xds_token_path is not None and self.xds_token is not None:
            out[self.xds_token_path] = self.xds_token
        return out

    @property
    def app_address(self) -> str:
        return f"{LOCALHOST}:{self.app_port}"

    @property
    def metrics_address(self) -> str:
        return f"{LOCALHOST}:{self.metrics_port}"

    @property
    def admin_address(self) -> str:
        return f"{LOCALHOST}:{self.admin_port}"

    # The names observability.ReplicaAddresses reads, so the scrape model takes replicas as-is.
    @property
    def metrics(self) -> str:
        return self.metrics_address

    @property
    def sidecar_admin(self) -> str:
        return self.admin_address


@dataclass(frozen=True)
class IngressPlan:
    node_id: str
    port: int
    admin_port: int
    bootstrap_path: Path
    bootstrap: Mapping[str, Any]
    process: ProcessSpec
    tls: bool = False
    """The listener serves TLS to outside clients (``LocalSettings.ingress_tls``)."""

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def admin_address(self) -> str:
        return f"{LOCALHOST}:{self.admin_port}"


@dataclass(frozen=True)
class ControlPlanePlan:
    xds_port: int
    admin_port: int
    process: ProcessSpec

    @property
    def xds_address(self) -> str:
        return f"{LOCALHOST}:{self.xds_port}"

    @property
    def admin_address(self) -> str:
        return f"{LOCALHOST}:{self.admin_port}"


@dataclass(frozen=True)
class PrometheusPlan:
    """A Prometheus scraping the whole mesh with the generated rules (``up --prometheus``)."""

    port: int
    config_path: Path
    config_text: str
    rules_path: Path
    """Written by the launcher (``observability.write_rules``); the config names it."""
    process: ProcessSpec

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"


@dataclass(frozen=True)
class Plan:
    run_dir: Path
    control_plane: ControlPlanePlan
    replicas: tuple[ReplicaPlan, ...]
    ingress: IngressPlan
    prometheus: PrometheusPlan | None = None
    services: tuple[MeshService, ...] = ()
    """The MeshServices the plan was made for, every declared one (with a workload or not)."""
    xds_roots_sds: tuple[Path, Path] | None = None
    """(the file-based SDS document every bootstrap reads the xDS server's roots from, the
    PEM bundle it names): with a secured, TLS control plane (``xds_trusted_ca``)."""

    def files(self) -> dict[Path, str]:
        """Every file the processes need before they start: bootstraps, app config and the
        Prometheus config (its rules file is written by the launcher). Write them with mode
        ``FILE_MODE``: a bootstrap holds its node's xDS token, as a proxyless app's token file
        does."""
        out = {self.ingress.bootstrap_path: _json(self.ingress.bootstrap)}
        for r in self.replicas:
            out |= r.files()
        if self.prometheus is not None:
            out[self.prometheus.config_path] = self.prometheus.config_text
        if self.xds_roots_sds is not None:
            document, bundle = self.xds_roots_sds
            out[document] = _json(xds_roots_sds_document(bundle))
        return out

    def replica(self, key: str) -> ReplicaPlan:
        for r in self.replicas:
            if r.key == key:
                return r
        raise KeyError(key)

    @property
    def node_ids(self) -> tuple[str, ...]:
        """Every Envoy the control plane should see: sidecars, then the ingress."""
        return (*(r.node_id for r in self.replicas), self.ingress.node_id)


def ports_needed(services: Sequence[MeshService], *, prometheus: bool = False) -> int:
    return (
        _FIXED_PORTS
        + PORTS_PER_REPLICA
        * sum(len(_replica_names(svc)) for svc in services if svc.workload is not None)
        + (1 if prometheus else 0)
    )


def build_plan(
    services: Sequence[MeshService], ports: Iterator[int], settings: LocalSettings
) -> Plan:
    """The plan for ``services``. ``ports`` yields free loopback ports (``ports_needed`` of
    them); raises ``PlanError`` for a resource local mode cannot run, or too few ports."""
    take = _PortTaker(ports)
    run = settings.run_dir
    if settings.otlp_endpoint is not None and not _HOST_PORT.match(settings.otlp_endpoint):
        raise PlanError(f"OTLP endpoint {settings.otlp_endpoint!r}: expected host:port")
    if not 0 <= settings.trace_sampling <= 1:
        raise PlanError(f"trace sampling {settings.trace_sampling!r}: expected a ratio from 0 to 1")
    xds_port, cp_admin = take(), take()
    control_plane = ControlPlanePlan(
        xds_port=xds_port,
        admin_port=cp_admin,
        process=ProcessSpec(
            name="control-plane",
            argv=(
                settings.python,
                "-m",
                "grpcmesh_control",
                "control-plane",
                "--state-dir",
                str(run),
                "--xds-port",
                str(xds_port),
                "--admin-port",
                str(cp_admin),
                *(() if settings.xds_credential is None else ("--secure-xds",)),
                *(() if settings.ingress_tls is None else settings.ingress_tls.argv()),
            ),
            log=run / "control-plane.log",
            cwd=run,
            env=MappingProxyType({"PYTHONUNBUFFERED": "1"}),
        ),
    )
    replicas = tuple(
        _replica(svc, version, replica, take, settings, control_plane.xds_address)
        for svc in sorted(services, key=lambda s: s.name)
        if svc.workload is not None
        for version, replica in _replica_names(svc)
    )
    ingress = _ingress(take, settings, control_plane.xds_address)
    return Plan(
        run_dir=run,
        control_plane=control_plane,
        replicas=replicas,
        ingress=ingress,
        prometheus=(
            None
            if settings.prometheus is None
            else _prometheus(take(), settings, replicas, control_plane, ingress)
        ),
        services=tuple(sorted(services, key=lambda s: s.name)),
        xds_roots_sds=_xds_roots_sds(settings),
    )


def _xds_roots_sds(settings: LocalSettings) -> tuple[Path, Path] | None:
    if settings.xds_credential is None or settings.xds_trusted_ca is None:
        return None
    return settings.run_dir / XDS_ROOTS_SDS_FILE, settings.xds_trusted_ca


def new_replicas(plan: Plan, services: Sequence[MeshService]) -> int:
    """How many replicas ``services`` declare that ``plan`` does not run: ``replan`` takes
    ``PORTS_PER_REPLICA`` fresh ports for each."""
    running = {r.key for r in plan.replicas}
    return sum(
        1
        for svc in services
        if svc.workload is not None
        for _, replica in _replica_names(svc)
        if f"{svc.name}/{replica}" not in running
    )


def replan(
    plan: Plan, services: Sequence[MeshService], ports: Iterator[int], settings: LocalSettings
) -> Plan:
    """The plan for a changed set of ``services`` (a live ``apply``): the same control plane,
    ingress and Prometheus; a replica that exists in both keeps its ports (so comparing the two
    ``ReplicaPlan``s tells whether it must restart, or only gets a new ``config.yaml``); a new
    one takes fresh ``ports`` (``new_replicas(plan, services)`` of them, times
    ``PORTS_PER_REPLICA``). Raises ``PlanError`` like ``build_plan``."""
    old = {r.key: r for r in plan.replicas}
    fresh = _PortTaker(ports)
    replicas = []
    for svc in sorted(services, key=lambda s: s.name):
        if svc.workload is None:
            continue
        for version, replica in _replica_names(svc):
            prev = old.get(f"{svc.name}/{replica}")
            take = fresh if prev is None else _PortTaker(iter(ports_of(prev)))
            replicas.append(
                _replica(svc, version, replica, take, settings, plan.control_plane.xds_address)
            )
    prometheus = plan.prometheus
    if prometheus is not None:  # the same Prometheus, scraping the new set of replicas
        prometheus = _prometheus(
            prometheus.port, settings, replicas, plan.control_plane, plan.ingress
        )
    return replace(
        plan,
        replicas=tuple(replicas),
        prometheus=prometheus,
        services=tuple(sorted(services, key=lambda s: s.name)),
    )


def ports_of(replica: ReplicaPlan) -> tuple[int, ...]:
    """In the order ``_replica`` takes them."""
    return (
        replica.app_port,
        replica.metrics_port,
        replica.inbound_port,
        replica.egress_port,
        replica.admin_port,
    )


class _PortTaker:
    def __init__(self, ports: Iterator[int]) -> None:
        self._ports = ports
        self._taken: set[int] = set()

    def __call__(self) -> int:
        port = next(self._ports, None)
        if port is None:
            raise PlanError(f"ran out of ports after {len(self._taken)}")
        if port in self._taken or not 0 < port < 65536:
            raise PlanError(f"port {port} is invalid or given twice")
        self._taken.add(port)
        return port


def _replica_names(svc: MeshService) -> list[tuple[VersionTarget, str]]:
    """(version, replica name) pairs; a version's own replica count wins over spec.replicas.

    Weight-0 versions run too: shifting weight to them must not need a launcher change.
    """
    return [
        (v, f"{v.name}-{i}")
        for v in svc.versions
        for i in range(svc.replicas if v.replicas is None else v.replicas)
    ]


def _field(svc: MeshService, version: VersionTarget, name: str) -> str:
    """Where a workload field of ``version`` comes from: the version's own, else the workload's."""
    if getattr(version, name):
        index = next(i for i, v in enumerate(svc.versions) if v.name == version.name)
        return f"spec.versions[{index}].{name}"
    return f"spec.workload.{name}"


def _app_argv(
    svc: MeshService, version: VersionTarget, workload: Workload, python: str
) -> tuple[str, ...]:
    command = list(workload.command)
    if not command:
        # In a pod an empty command means the image's entrypoint; there is no image here.
        raise PlanError(
            f"MeshService {svc.key}: {_field(svc, version, 'command')}: required in local mode"
        )
    if PurePath(command[0]).name in _PYTHON_NAMES:
        command[0] = python
    return (*command, *workload.args)


def _app_env(svc: MeshService, version: VersionTarget, workload: Workload) -> dict[str, str]:
    """The version's literal env values; references to Secrets/ConfigMaps have no local source."""
    env: dict[str, str] = {}
    for var in workload.env:
        if var.value is None:
            own = any(v.name == var.name for v in version.env)
            path = _field(svc, version, "env") if own else "spec.workload.env"
            raise PlanError(
                f"MeshService {svc.key}: {path} {var.name}: valueFrom is not "
                "supported in local mode (use value)"
            )
        env[var.name] = var.value
    return env


def _proxyless_bootstrap(
    svc: MeshService, node: ProxyNode, xds_address: str, settings: LocalSettings, token: Path
) -> str:
    """A proxyless service's app gets gRPC's xDS bootstrap (its own node, the control plane);
    its sidecar's egress port is where the control plane routes its external backends. With a
    secured control plane it proves its node with the token in ``token``, over TLS."""
    if settings.xds_credential is None:
        return json.dumps(grpc_bootstrap(node, xds_address), sort_keys=True)
    if settings.xds_trusted_ca is None:
        raise PlanError(
            f"MeshService {svc.key}: spec.proxyless needs the xDS server's TLS (the mesh root) "
            "with secured xDS: gRPC sends its node token over TLS only"
        )
    bootstrap = grpc_bootstrap(
        node, xds_address, trusted_ca=str(settings.xds_trusted_ca), token_file=str(token)
    )
    return json.dumps(bootstrap, sort_keys=True)


def _replica(
    svc: MeshService,
    version: VersionTarget,
    replica: str,
    take: _PortTaker,
    settings: LocalSettings,
    xds_address: str,
) -> ReplicaPlan:
    run = settings.run_dir
    workload = svc.workload_of(version)
    assert workload is not None
    directory = run / svc.name / replica
    app_port, metrics_port, inbound, egress, admin = (take() for _ in range(PORTS_PER_REPLICA))
    node = ProxyNode(
        id=NodeId.sidecar(svc.name, replica),
        inbound_port=inbound,
        egress_port=egress,
        app_port=app_port,
        bind_address=LOCALHOST,
        otlp_collector=settings.otlp_endpoint,
        trace_sampling=settings.trace_sampling,
        access_log=settings.access_logs,
    )
    config_path = directory / "config.yaml"
    bootstrap_path = directory / "envoy.json"
    proxyless = None
    if svc.proxyless:
        app_node = ProxyNode(NodeId.proxyless(svc.name, replica), egress_port=egress)
        token_file = directory / XDS_TOKEN_FILE
        proxyless = (
            token_file,
            _proxyless_bootstrap(svc, app_node, xds_address, settings, token_file),
        )
    contract = AppEnv(
        service=svc.name,
        version=version.name,
        host=LOCALHOST,
        port=app_port,
        metrics_host=LOCALHOST,
        metrics_port=metrics_port,
        config_file=str(config_path),
        sidecar_egress=f"{LOCALHOST}:{egress}",
        sidecar_admin=f"{LOCALHOST}:{admin}",
        db_path=str(run / svc.name / "data.db"),
        drain_seconds=settings.drain_seconds,
        otlp_endpoint=settings.otlp_endpoint,
        trace_sampling_ratio=settings.trace_sampling,
        xds_bootstrap=None if proxyless is None else proxyless[1],
        workers=workload.workers,
    )
    # The mesh's variables come last: a workload cannot move its own ports or database.
    env = {**_app_env(svc, version, workload), "PYTHONUNBUFFERED": "1", **contract.variables()}
    token_path = token = None
    if proxyless is not None and settings.xds_credential is not None:
        token_path, token = proxyless[0], _node_token(settings, svc.name, replica)
        env[CALL_CREDS_GATE] = "true"  # else gRPC ignores the bootstrap's call_creds
    return ReplicaPlan(
        service=svc.name,
        version=version.name,
        replica=replica,
        node_id=str(node.id),
        dir=directory,
        app_port=app_port,
        metrics_port=metrics_port,
        inbound_port=inbound,
        egress_port=egress,
        admin_port=admin,
        config_path=config_path,
        config_text=yaml.safe_dump(dict(svc.config_map), sort_keys=True),
        bootstrap_path=bootstrap_path,
        bootstrap=MappingProxyType(
            render_bootstrap(
                str(node.id),
                node.id.envoy_cluster,
                xds_address,
                admin,
                node_metadata=node.metadata(),
                bind_address=LOCALHOST,
                admin_socket=_admin_socket(directory),
                health_paths=READ_ONLY_PATHS,
                **_xds_security(settings, str(node.id)),
            )
        ),
        app=ProcessSpec(
            name=f"{svc.name}/{replica}/app",
            argv=_app_argv(svc, version, workload, settings.python),
            log=directory / "app.log",
            cwd=directory,
            env=MappingProxyType(env),
        ),
        sidecar=_envoy_process(f"{svc.name}/{replica}/envoy", bootstrap_path, directory, settings),
        xds_token_path=token_path,
        xds_token=token,
    )


def _node_token(settings: LocalSettings, service: str, replica: str) -> str:
    """A proxyless app's node token (``proxyless~<service>~<replica>``)."""
    assert settings.xds_credential is not None
    node_id = str(NodeId.proxyless(service, replica))
    return credential.node_token(
        settings.xds_credential, node_id, expires=settings.xds_token_expires
    )


def _xds_security(settings: LocalSettings, node_id: str) -> dict[str, Any]:
    """``render_bootstrap``'s arguments proving ``node_id`` to a secured control plane."""
    if settings.xds_credential is None:
        return {}
    roots = _xds_roots_sds(settings)
    return {
        "xds_metadata": credential.node_metadata(
            settings.xds_credential, node_id, expires=settings.xds_token_expires
        ),
        "xds_trusted_ca": settings.xds_trusted_ca,
        "xds_roots_sds": None if roots is None else roots[0],
    }


def _admin_socket(directory: Path) -> Path:
    path = directory / ADMIN_SOCKET
    if len(str(path).encode()) > UNIX_PATH_MAX:
        raise PlanError(
            f"{path}: longer than the {UNIX_PATH_MAX} bytes a unix socket path may have "
            "(each Envoy's admin socket); use a shorter --state-dir"
        )
    return path


def _ingress(take: _PortTaker, settings: LocalSettings, xds_address: str) -> IngressPlan:
    directory = settings.run_dir / "ingress"
    port, admin = take(), take()
    node = ProxyNode(
        id=NodeId.ingress(settings.ingress_name),
        ingress_port=port,
        bind_address=LOCALHOST,
        otlp_collector=settings.otlp_endpoint,
        trace_sampling=settings.trace_sampling,
        access_log=settings.access_logs,
    )
    bootstrap_path = directory / "envoy.json"
    return IngressPlan(
        node_id=str(node.id),
        port=port,
        admin_port=admin,
        bootstrap_path=bootstrap_path,
        bootstrap=MappingProxyType(
            render_bootstrap(
                str(node.id),
                node.id.envoy_cluster,
                xds_address,
                admin,
                node_metadata=node.metadata(),
                bind_address=LOCALHOST,
                admin_socket=_admin_socket(directory),
                health_paths=READ_ONLY_PATHS,
                **_xds_security(settings, str(node.id)),
            )
        ),
        process=_envoy_process("ingress/envoy", bootstrap_path, directory, settings),
        tls=settings.ingress_tls is not None,
    )


def _prometheus(
    port: int,
    settings: LocalSettings,
    replicas: Sequence[ReplicaPlan],
    control_plane: ControlPlanePlan,
    ingress: IngressPlan,
) -> PrometheusPlan:
    assert settings.prometheus is not None
    directory = settings.run_dir / "prometheus"
    rules = directory / RULES_FILE_NAME
    targets = ScrapeTargets.from_replicas(
        replicas,
        control_plane=control_plane.admin_address,
        ingresses={settings.ingress_name: ingress.admin_address},
    )
    config = prometheus_config(targets, settings.scrape_interval, rule_files=[str(rules)])
    config_path = directory / "prometheus.yml"
    address = f"{LOCALHOST}:{port}"
    return PrometheusPlan(
        port=port,
        config_path=config_path,
        config_text=yaml.safe_dump(config, sort_keys=False),
        rules_path=rules,
        process=ProcessSpec(
            name="prometheus",
            argv=(
                settings.prometheus,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={address}",
                # Loopback only, and nothing kept: the run directory is emptied by each `up`.
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ),
            log=directory / "prometheus.log",
            cwd=directory,
        ),
    )


def _envoy_process(
    name: str, bootstrap: Path, directory: Path, settings: LocalSettings
) -> ProcessSpec:
    argv = envoy_command(
        bootstrap,
        envoy=settings.envoy,
        concurrency=settings.envoy_concurrency,
        log_level=settings.envoy_log_level,
    )
    return ProcessSpec(name=name, argv=tuple(argv), log=directory / "envoy.log", cwd=directory)


def _json(doc: Mapping[str, Any]) -> str:
    return json.dumps(dict(doc), indent=1, sort_keys=True) + "\n"
