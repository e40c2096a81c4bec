"""Local mode's mesh root (local.mesh_ca): created once in the state directory with private
permissions, read back unchanged, and a user's own files used as they are."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from grpcmesh_control.local.mesh_ca import CA_DIR, _create, load_or_create_mesh_ca
from grpcmesh_control.mesh.ca import CaError, CertificateAuthority

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_root_is_created_once_with_private_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load_or_create_mesh_ca(state, NOW)
    directory = state / CA_DIR
    assert mode(directory) == 0o700
    assert mode(directory / "tls.key") == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]
    again = load_or_create_mesh_ca(state, NOW + dt.timedelta(days=1))
    assert again.certificate == first.certificate
    assert [p.name for p in state.iterdir()] == [CA_DIR]  # no staging directory left behind


def test_a_users_own_ca_files_are_used(tmp_path: Path) -> None:
    theirs = CertificateAuthority.create_root(NOW, common_name="platform root")
    directory = tmp_path / CA_DIR
    directory.mkdir(mode=0o700)
    cert, key, root = theirs.pem()
    (directory / "tls.crt").write_bytes(cert)
    (directory / "tls.key").write_bytes(key)
    (directory / "tls.key").chmod(0o600)
    (directory / "ca.crt").write_bytes(root)
    assert load_or_create_mesh_ca(tmp_path, NOW).certificate == theirs.certificate


def test_a_readable_key_or_missing_file_is_refused_not_replaced(tmp_path: Path) -> None:
    load_or_create_mesh_ca(tmp_path, NOW)
    key = tmp_path / CA_DIR / "tls.key"
    key.chmod(0o644)
    with pytest.raises(CaError, match="readable by others"):
        load_or_create_mesh_ca(tmp_path, NOW)
    key.unlink()
    with pytest.raises(CaError, match=r"tls\.key: missing"):
        load_or_create_mesh_ca(tmp_path, NOW)
    assert not key.exists()


def test_a_creator_that_loses_the_race_keeps_the_winners_root(tmp_path: Path) -> None:
    """Two processes saw no CA and both create one: the second rename fails on the winner's
    populated directory, which stays."""
    winner = load_or_create_mesh_ca(tmp_path, NOW)
    _create(tmp_path, tmp_path / CA_DIR, NOW)  # the loser, arriving after the winner's rename
    assert load_or_create_mesh_ca(tmp_path, NOW).certificate == winner.certificate
    assert [p.name for p in tmp_path.iterdir()] == [CA_DIR]
