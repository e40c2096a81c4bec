"""The channel factory's choice of target: a proxyless service's channels dial ``xds:///``
with gRPC's bootstrap handed over once; others dial the sidecar or the configured address."""

from __future__ import annotations

import os

import pytest

from grpcmesh_kit.channels import (
    GRPC_XDS_BOOTSTRAP_CONFIG,
    XDS_CALL_CREDS_GATE,
    ChannelFactory,
    use_xds_bootstrap,
)
from grpcmesh_kit.config import KitSettings

BOOTSTRAP = '{"xds_servers": [], "node": {"id": "proxyless~shop~0"}}'


def factory(**settings: object) -> ChannelFactory:
    return ChannelFactory(lambda: KitSettings(**settings), [])


def test_proxyless_channels_dial_xds_targets() -> None:
    channels = factory(xds_bootstrap=BOOTSTRAP, sidecar_egress="127.0.0.1:15001")
    assert channels.route("prices") == ("xds:///prices", None)


def test_without_a_bootstrap_channels_dial_the_sidecar() -> None:
    assert factory(sidecar_egress="127.0.0.1:15001").route("prices") == (
        "127.0.0.1:15001",
        "prices",
    )


async def test_the_bootstrap_is_handed_to_grpc_when_the_first_xds_channel_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(GRPC_XDS_BOOTSTRAP_CONFIG, raising=False)
    channels = factory(xds_bootstrap=BOOTSTRAP)
    try:
        channel = channels.channel("prices")
        assert channels.channel("prices") is channel  # cached
        assert os.environ[GRPC_XDS_BOOTSTRAP_CONFIG] == BOOTSTRAP
    finally:
        await channels.close()


def test_a_second_bootstrap_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GRPC_XDS_BOOTSTRAP_CONFIG, BOOTSTRAP)
    use_xds_bootstrap(BOOTSTRAP)  # the same one again is fine
    with pytest.raises(RuntimeError, match="one xDS client"):
        use_xds_bootstrap('{"xds_servers": ["elsewhere"]}')


SECURED = (
    '{"xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "tls"}], '
    '"call_creds": [{"type": "jwt_token_file", "config": {"jwt_token_file": "/t"}}]}]}'
)


@pytest.mark.parametrize(("bootstrap", "gate"), [(BOOTSTRAP, None), (SECURED, "true")])
def test_a_bootstrap_with_call_creds_turns_on_grpcs_reading_of_them(
    monkeypatch: pytest.MonkeyPatch, bootstrap: str, gate: str | None
) -> None:
    monkeypatch.delenv(GRPC_XDS_BOOTSTRAP_CONFIG, raising=False)
    monkeypatch.delenv(XDS_CALL_CREDS_GATE, raising=False)
    use_xds_bootstrap(bootstrap)
    assert os.environ.get(XDS_CALL_CREDS_GATE) == gate


def test_an_explicit_call_creds_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GRPC_XDS_BOOTSTRAP_CONFIG, raising=False)
    monkeypatch.setenv(XDS_CALL_CREDS_GATE, "false")
    use_xds_bootstrap(SECURED)
    assert os.environ[XDS_CALL_CREDS_GATE] == "false"
