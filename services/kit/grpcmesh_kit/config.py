"""Typed settings: environment variables (``GRPCMESH_*``) over an optional YAML file.

The file is the mounted ConfigMap in a cluster. Kubernetes updates such a mount by swapping the
``..data`` symlink, so inotify on the file itself misses changes; ``SettingsWatcher`` instead
polls the resolved content and reloads when its bytes change. An invalid new file is logged
and ignored: the last good settings stay in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import yaml
from pydantic import Field, PrivateAttr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

log = logging.getLogger(__name__)

ENV_PREFIX = "GRPCMESH_"
MiB = 1024 * 1024


class KitSettings(BaseSettings):
    """Settings every service has. Services subclass it to add their own fields."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    service_name: str = "service"
    version: str | None = None
    """The version of the service this replica runs (a ``spec.versions`` name), set by the mesh
    in both modes; on traces as ``service.version`` and on ``grpcmesh_service_info``."""
    host: str = "127.0.0.1"
    """Address the gRPC server binds. Loopback by default: in a pod the sidecar forwards to it."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 asks the OS for a free one (see ports_file)."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Prometheus /metrics port; 0 asks the OS for a free one."""
    workers: int = Field(default=1, ge=1, le=64)
    """Processes serving this replica, all on ``port`` (SO_REUSEPORT), to use more than one core;
    read at start. Above 1, ``run()`` supervises that many workers and serves their summed
    metrics on ``metrics_port`` (see ``grpcmesh_kit.workers``)."""
    ports_file: Path | None = None
    """If set, the bound ports are written there as JSON, for launchers that pass port 0."""
    drain_seconds: float = Field(default=3.0, ge=0)
    """After SIGTERM: how long health says NOT_SERVING while still serving, so load balancers
    and sidecars stop sending before the listener closes."""
    grace_seconds: float = Field(default=10.0, ge=0)
    """After the drain: how long in-flight calls get to finish before they are cancelled."""
    max_message_bytes: int = Field(default=4 * MiB, gt=0)
    """Largest request or response message; larger ones fail with RESOURCE_EXHAUSTED."""
    keepalive_time_ms: int = Field(default=30_000, gt=0)
    keepalive_timeout_ms: int = Field(default=10_000, gt=0)
    config_file: Path | None = None
    """Optional YAML file (a mounted ConfigMap) with any of these fields; reloaded on change."""
    config_poll_seconds: float = Field(default=1.0, gt=0)
    targets: dict[str, str] = Field(default_factory=dict)
    """Service name -> host:port, for dialling services directly (no sidecar)."""
    sidecar_egress: str | None = None
    """host:port of the local Envoy's egress listener; when set, every channel dials it and
    Envoy routes on :authority (the target service name)."""
    xds_bootstrap: str | None = None
    """gRPC's xDS bootstrap (JSON) for a proxyless service (``spec.proxyless``); when set,
    every channel dials ``xds:///<service>``: gRPC's own xDS client takes routes, deadlines,
    retries and endpoints from the control plane and calls the backend's sidecar directly,
    with no egress sidecar hop (external backends still go through the sidecar: the control
    plane routes them there)."""
    sidecar_admin: str | None = None
    """host:port of the local Envoy's admin listener; when set, the app reports SERVING only
    once Envoy's /ready answers 200, i.e. the sidecar holds its first config from xDS."""
    sidecar_ready_timeout_seconds: float = Field(default=60.0, gt=0)
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector (``host:port`` or ``http(s)://host:port``) to export spans to; read
    at start. Unset, ``OTEL_EXPORTER_OTLP_ENDPOINT`` is honoured; neither: nothing recorded."""
    trace_sampling_ratio: float = Field(default=0.01, ge=0.0, le=1.0)
    """Share of the traces that start at this service which are recorded (read at start). A
    call that arrives with a ``traceparent`` follows the caller's decision instead, so a trace
    sampled at the ingress is followed here and an unsampled one is not recorded. The mesh sets
    one ratio for Envoy and every service (``GRPCMESH_TRACE_SAMPLING_RATIO``)."""

    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        # Kept so a reload re-applies what the code passed, and re-reads env and file for the rest.
        self._overrides = dict(overrides)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls, init_settings))

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Settings from overrides, then env, then the config file, then defaults."""
        return cls(**overrides)

    def reloaded(self) -> Self:
        """Fresh settings from the same sources (env and the file), keeping explicit overrides."""
        return type(self)(**self._overrides)


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the file named by ``config_file`` (from init kwargs or GRPCMESH_CONFIG_FILE)."""

    def __init__(
        self, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._init = init_settings

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = self._init().get("config_file") or os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
        if not path:
            return {}
        return read_config_file(Path(path))


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``; {} when the file does not exist (yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


S = TypeVar("S", bound=KitSettings)


class SettingsWatcher(Generic[S]):
    """Holds the current settings and reloads them when the config file's content changes."""

    def __init__(self, initial: S) -> None:
        self._current = initial
        self._digest = _digest(initial.config_file)
        self._listeners: list[Callable[[S], None]] = []

    @property
    def current(self) -> S:
        return self._current

    def subscribe(self, listener: Callable[[S], None]) -> None:
        self._listeners.append(listener)

    def check(self) -> bool:
        """Reload if the file changed; True when new settings took effect."""
        digest = _digest(self._current.config_file)
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            fresh = self._current.reloaded()
        except (ValidationError, ValueError, yaml.YAMLError) as exc:
            log.error(
                "config file %s rejected, keeping previous settings: %s",
                self._current.config_file,
                exc,
            )
            return False
        self._current = fresh
        log.info("config file %s reloaded", fresh.config_file)
        for listener in self._listeners:
            listener(fresh)
        return True

    async def watch(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            await asyncio.sleep(self._current.config_poll_seconds)
            self.check()


def _digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        # read_bytes follows symlinks, so a swapped ..data link shows as new content.
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
