"""The kit's environment contract is one definition, and the kit reads every variable of it."""

from __future__ import annotations

import os

import pytest

from grpcmesh_control.mesh import appenv
from grpcmesh_kit import KitSettings

FULL = appenv.AppEnv(
    service="reviews",
    version="v2",
    host="127.0.0.1",
    port=50051,
    metrics_host="0.0.0.0",
    metrics_port=9464,
    config_file="/etc/grpcmesh/config/config.yaml",
    sidecar_egress="127.0.0.1:15001",
    sidecar_admin="127.0.0.1:15000",
    db_path="/var/lib/reviews/reviews.db",
    drain_seconds=0.5,
    otlp_endpoint="127.0.0.1:4317",
    xds_bootstrap='{"xds_servers": []}',
    workers=2,
)


def test_every_variable_is_a_kit_setting() -> None:
    fields = set(KitSettings.model_fields)
    # GRPCMESH_DB_PATH is read by the services that keep a Store (their own db_path setting).
    for name in set(FULL.variables()) - {appenv.DB_PATH}:
        assert name.startswith(appenv.PREFIX)
        assert name.removeprefix(appenv.PREFIX).lower() in fields, name


def test_the_reserved_variables_are_always_set() -> None:
    minimal = appenv.AppEnv("a", "v1", "127.0.0.1", 1, "127.0.0.1", 2, "/c.yaml")
    optional = {appenv.SIDECAR_ADMIN, appenv.SIDECAR_EGRESS, appenv.XDS_BOOTSTRAP}
    assert appenv.RESERVED - optional == set(minimal.variables())
    assert set(FULL.variables()) >= appenv.RESERVED


def test_the_kit_reads_what_the_mesh_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(appenv.PREFIX):
            monkeypatch.delenv(name)
    for name, value in FULL.variables().items():
        monkeypatch.setenv(name, value)
    settings = KitSettings.load()
    assert (settings.service_name, settings.version) == ("reviews", "v2")
    assert (settings.host, settings.port) == ("127.0.0.1", 50051)
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9464)
    assert str(settings.config_file) == FULL.config_file
    assert settings.sidecar_egress == FULL.sidecar_egress
    assert settings.sidecar_admin == FULL.sidecar_admin
    assert settings.drain_seconds == 0.5
    assert settings.otlp_endpoint == FULL.otlp_endpoint
    assert settings.xds_bootstrap == FULL.xds_bootstrap
    assert settings.workers == 2


def test_variables_are_sorted_and_unset_ones_left_out() -> None:
    names = list(FULL.variables())
    assert names == sorted(names)
    minimal = appenv.AppEnv("a", "v1", "127.0.0.1", 1, "127.0.0.1", 2, "/c.yaml")
    assert appenv.DB_PATH not in minimal.variables()
