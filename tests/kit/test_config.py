"""Settings come from env over a YAML file; the file reloads live, ConfigMap-style."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from grpcmesh_kit import SettingsWatcher
from tests.kit.echo_service import EchoSettings


def configmap_dir(root: Path, version: str, content: str) -> None:
    """Lay out a directory the way the kubelet writes a ConfigMap volume: the file is a link
    through ``..data``, which points at a timestamped directory and is swapped atomically."""
    real = root / f"..{version}"
    real.mkdir()
    (real / "config.yaml").write_text(content)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(real.name)
    tmp_link.replace(root / "..data")
    if not (root / "config.yaml").is_symlink():
        (root / "config.yaml").symlink_to("..data/config.yaml")


def test_env_wins_over_file_and_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("delay_ms: 5\nstartup-delay-ms: 7\n")
    monkeypatch.setenv("GRPCMESH_CONFIG_FILE", str(config))
    monkeypatch.setenv("GRPCMESH_DELAY_MS", "9")
    monkeypatch.setenv("GRPCMESH_TARGETS", '{"inventory": "127.0.0.1:5000"}')
    settings = EchoSettings.load()
    assert settings.delay_ms == 9
    assert settings.startup_delay_ms == 7
    assert settings.targets == {"inventory": "127.0.0.1:5000"}
    assert settings.drain_seconds == EchoSettings.model_fields["drain_seconds"].default


def test_reload_follows_a_configmap_symlink_swap(tmp_path: Path) -> None:
    configmap_dir(tmp_path, "2026_11_27_01", "delay_ms: 1\n")
    watcher = SettingsWatcher(EchoSettings(config_file=tmp_path / "config.yaml"))
    assert watcher.current.delay_ms == 1
    assert watcher.check() is False  # nothing changed yet

    seen: list[int] = []
    watcher.subscribe(lambda settings: seen.append(settings.delay_ms))
    configmap_dir(tmp_path, "2026_11_27_02", "delay_ms: 250\n")
    assert watcher.check() is True
    assert watcher.current.delay_ms == 250
    assert seen == [250]


def test_invalid_file_keeps_the_last_good_settings(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("delay_ms: 3\n")
    watcher = SettingsWatcher(EchoSettings(config_file=config))
    config.write_text("delay_ms: not-a-number\n")
    assert watcher.check() is False
    assert watcher.current.delay_ms == 3
    config.write_text("- a list, not a mapping\n")
    assert watcher.check() is False
    config.write_text("delay_ms: 4\n")
    assert watcher.check() is True
    assert watcher.current.delay_ms == 4


def test_invalid_env_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPCMESH_PORT", "70000")
    with pytest.raises(ValueError, match="port"):
        EchoSettings.load()
    assert os.environ["GRPCMESH_PORT"] == "70000"


async def test_a_reload_is_counted_on_metrics(tmp_path: Path) -> None:
    """grpcmesh_config_reloads_total lets operators and tests see a reload take effect."""
    import asyncio

    from tests.kit.conftest import echo_settings
    from tests.kit.echo_service import build_app
    from tests.scrape import scrape, value

    config = tmp_path / "config.yaml"
    config.write_text("delay_ms: 0\n")
    app, _ = build_app(echo_settings(config_file=config, config_poll_seconds=0.05))
    async with app.running():
        assert value(await scrape(app.metrics_address), "grpcmesh_config_reloads_total") == 0
        config.write_text("delay_ms: 7\n")
        async with asyncio.timeout(5):
            while not value(await scrape(app.metrics_address), "grpcmesh_config_reloads_total"):
                await asyncio.sleep(0.05)
        assert app.settings.delay_ms == 7
