"""The one place client channels are built: ``channels.channel("inventory")``.

Without a sidecar the channel dials the service's address from ``settings.targets``. With one
(``settings.sidecar_egress``) it dials the local Envoy's egress listener and sets ``:authority``
to the service name, which is what Envoy routes on; the app never learns endpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import grpc

from grpcmesh_kit.config import KitSettings


@runtime_checkable
class TargetAware(Protocol):
    """Client interceptors that label calls with the channel's target, made per channel."""

    def for_target(self, host: str, port: int) -> Sequence[grpc.aio.ClientInterceptor]: ...


class UnknownService(LookupError):
    """No address is configured for the requested service."""


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
        if settings.sidecar_egress:
            return settings.sidecar_egress, service
        try:
            return settings.targets[service], None
        except KeyError:
            raise UnknownService(
                f"no address for service {service!r}: set GRPCMESH_TARGETS "
                f'(e.g. {{"{service}": "127.0.0.1:50051"}}) or GRPCMESH_SIDECAR_EGRESS'
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
            if authority:
                options.append(("grpc.default_authority", authority))
            channel = grpc.aio.insecure_channel(
                address, options=options, interceptors=self._for_target(address, authority)
            )
            self._channels[key] = channel
        return channel

    def _for_target(self, address: str, authority: str | None) -> list[grpc.aio.ClientInterceptor]:
        """The interceptors for one channel: those that label calls with their target (the
        tracing one: ``server.address``/``server.port``) get it."""
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
