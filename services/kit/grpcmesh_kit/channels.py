"""The one place client channels are built: ``channels.channel("inventory")``.

Without a sidecar the channel dials the service's address from ``settings.targets``. With one
(``settings.sidecar_egress``) it dials the local Envoy's egress listener and sets ``:authority``
to the service name, which is what Envoy routes on; the app never learns endpoints. Proxyless
(``settings.xds_bootstrap``) it dials ``xds:///<service>``: gRPC's xDS client, configured by
that bootstrap, gets the service's routes and endpoints from the control plane itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import grpc

from grpcmesh_kit.config import KitSettings


@runtime_checkable
class TargetAware(Protocol):
    """Client interceptors that label calls with the channel's target, made per channel."""

    def for_target(self, host: str, port: int) -> Sequence[grpc.aio.ClientInterceptor]: ...


SIDECAR_RECONNECT_BACKOFF_MS = (100, 250)
"""(first, longest) wait before redialling the local sidecar after a failed connect. gRPC's
default (1 s, growing by 1.6x up to 2 min) is made for remote servers; the sidecar is on
loopback and a restart takes about a second, after which the app would keep failing calls at
once ("failed to connect", never sent) for up to ~2 s more: the chaos e2e test measured 17
orders cancelled that way after one sidecar restart."""


SIDECAR_WAIT_S = 0.5
"""How long a call through the sidecar waits for its channel to connect when it is not: the
sidecar is restarting, or the channel is between two redials. A restarted Envoy takes calls as
soon as it listens, while each of its app's channels may still be one back-off from redialling;
without the wait a saga step sent then failed at once as "never sent" and the order was
cancelled. A call still not connected after the wait fails as before (never sent)."""


class _AwaitSidecar(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Holds a call until the channel to the sidecar is connected, at most ``SIDECAR_WAIT_S``
    (and never past the call's own deadline). Free when it is connected (a state read)."""

    def __init__(self) -> None:
        self.channel: grpc.aio.Channel | None = None

    async def _connected(self, timeout: float | None) -> None:
        channel = self.channel
        if channel is None or channel.get_state(True) is grpc.ChannelConnectivity.READY:
            return
        wait = SIDECAR_WAIT_S if timeout is None else min(SIDECAR_WAIT_S, timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.channel_ready(), wait)

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        await self._connected(client_call_details.timeout)
        return await continuation(client_call_details, request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        await self._connected(client_call_details.timeout)
        return await continuation(client_call_details, request)


class UnknownService(LookupError):
    """No address is configured for the requested service."""


XDS_SCHEME = "xds:///"
GRPC_XDS_BOOTSTRAP_CONFIG = "GRPC_XDS_BOOTSTRAP_CONFIG"
"""Where gRPC's xDS client reads its bootstrap (JSON text), once per process: when the first
``xds:`` channel is made."""


XDS_CALL_CREDS_GATE = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"
"""Without it set true, gRPC (grpcio 1.85) ignores a bootstrap's ``call_creds``: the xDS calls
would go without the node token a secured control plane asks for, and be refused."""


def use_xds_bootstrap(bootstrap: str) -> None:
    """Hand ``bootstrap`` to gRPC's xDS client. It is read when the process's xDS client is
    created, so a different one later would be silently ignored: refuse it instead. A
    bootstrap with ``call_creds`` (the node's token) also turns on gRPC's reading of them,
    unless the environment already says otherwise."""
    current = os.environ.get(GRPC_XDS_BOOTSTRAP_CONFIG)
    if current is not None and current != bootstrap:
        raise RuntimeError(
            f"{GRPC_XDS_BOOTSTRAP_CONFIG} is already set to another bootstrap; "
            "a process has one xDS client"
        )
    if _has_call_creds(bootstrap):
        os.environ.setdefault(XDS_CALL_CREDS_GATE, "true")
    os.environ[GRPC_XDS_BOOTSTRAP_CONFIG] = bootstrap


def _has_call_creds(bootstrap: str) -> bool:
    try:
        servers = json.loads(bootstrap).get("xds_servers")
    except (ValueError, AttributeError):
        return False  # gRPC reports a bad bootstrap itself, when it reads it
    return isinstance(servers, list) and any(
        isinstance(server, dict) and server.get("call_creds") for server in servers
    )


class ChannelFactory:
    def __init__(
        self,
        settings: Callable[[], KitSettings],
        interceptors: Sequence[grpc.aio.ClientInterceptor | TargetAware],
    ) -> None:
        self._settings = settings
        self._interceptors = list(interceptors)
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    def route(self, service: str) -> tuple[str, str | None]:
        """(address to dial, :authority override) for ``service``."""
        settings = self._settings()
        if settings.xds_bootstrap:
            return f"{XDS_SCHEME}{service}", None
        if settings.sidecar_egress:
            return settings.sidecar_egress, service
        try:
            return settings.targets[service], None
        except KeyError:
            raise UnknownService(
                f"no address for service {service!r}: set GRPCMESH_TARGETS "
                f'(e.g. {{"{service}": "127.0.0.1:50051"}}), GRPCMESH_SIDECAR_EGRESS or '
                "GRPCMESH_XDS_BOOTSTRAP"
            ) from None

    def channel(self, service: str) -> grpc.aio.Channel:
        """A cached channel to ``service``; call inside the running event loop."""
        address, authority = self.route(service)
        key = (service, address)
        channel = self._channels.get(key)
        if channel is None:
            settings = self._settings()
            options: list[tuple[str, str | int]] = [
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
            ]
            if authority:  # through the sidecar
                first, longest = SIDECAR_RECONNECT_BACKOFF_MS
                options += [
                    ("grpc.default_authority", authority),
                    ("grpc.initial_reconnect_backoff_ms", first),
                    ("grpc.min_reconnect_backoff_ms", first),
                    ("grpc.max_reconnect_backoff_ms", longest),
                ]
            if address.startswith(XDS_SCHEME) and settings.xds_bootstrap:
                use_xds_bootstrap(settings.xds_bootstrap)
            interceptors = self._for_target(address, authority)
            waiter = _AwaitSidecar() if authority else None
            if waiter is not None:  # innermost: the wait counts in the call's latency
                interceptors.append(waiter)
            channel = grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
            if waiter is not None:
                waiter.channel = channel
            self._channels[key] = channel
        return channel

    def _for_target(self, address: str, authority: str | None) -> list[grpc.aio.ClientInterceptor]:
        """The interceptors for one channel: those that label calls with their target (the
        tracing one: ``server.address``/``server.port``) get it."""
        if address.startswith(XDS_SCHEME):
            target = (address.removeprefix(XDS_SCHEME), 0)  # endpoints come from xDS
        else:
            host, _, port = address.rpartition(":")
            target = (authority or host.strip("[]"), int(port) if port.isdigit() else 0)
        made: list[grpc.aio.ClientInterceptor] = []
        for interceptor in self._interceptors:
            if isinstance(interceptor, TargetAware):
                made.extend(interceptor.for_target(*target))
            else:
                made.append(interceptor)
        return made

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
