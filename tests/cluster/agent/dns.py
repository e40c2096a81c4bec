"""A DNS server the test controls, for the pods of a node agent (there is no CoreDNS here).

It answers A queries over UDP on a loopback port: first from a fixed table (name -> address),
then for Service names (``<svc>.<ns>.svc`` and ``<svc>.<ns>.svc.<cluster domain>``) with the
ready addresses of the Service's EndpointSlices, i.e. headless semantics: ClusterIPs are not
routable here (no kube-proxy), so a client dials a pod IP at the Service's port, which works
where ``port`` equals ``targetPort``. Other types of a known name get an empty answer; an
unknown name is NXDOMAIN.

How processes use it: the node agent gives every Envoy it starts this server as its resolver
(``envoy_resolver_overlay``, merged into the container's ``--config-yaml``), the way a kubelet
gives containers a ``resolv.conf``. Other programs resolve with the system resolver (so only
the fixed table, through ``--add-host``, reaches image runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import yaml

__all__ = ["DnsServer", "envoy_resolver_overlay", "with_envoy_resolver"]

Resolve = Callable[[str], Awaitable[Sequence[str] | None]]

_TYPE_A = 1
_CLASS_IN = 1
_NXDOMAIN = 3
_SERVFAIL = 2
_TTL = 2  # seconds: endpoints change as pods come and go


def _question(packet: bytes) -> tuple[str, int, int]:
    """(name, end offset of the question, query type) of a query with one question."""
    labels, offset = [], 12
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    qtype = struct.unpack("!H", packet[offset + 1 : offset + 3])[0]
    return ".".join(labels).lower(), offset + 5, qtype


def answer(packet: bytes, addresses: Sequence[str] | None, qtype: int, question_end: int) -> bytes:
    """The response to ``packet``: ``addresses`` as A records (None: NXDOMAIN)."""
    (query_id, flags) = struct.unpack("!HH", packet[:4])
    records = list(addresses or []) if qtype == _TYPE_A else []
    rcode = _NXDOMAIN if addresses is None else 0
    header = struct.pack(
        "!HHHHHH",
        query_id,
        0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode,
        1,
        len(records),
        0,
        0,
    )
    body = bytearray(packet[12:question_end])
    for address in records:
        body += struct.pack("!HHHIH", 0xC00C, _TYPE_A, _CLASS_IN, _TTL, 4)
        body += bytes(int(part) for part in address.split("."))
    return header + bytes(body)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.server.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            name, end, qtype = _question(data)
            addresses = await self.server.lookup(name)
            reply = answer(data, addresses, qtype, end)
        except (IndexError, struct.error, UnicodeError):
            return  # not a query we can parse: no answer, the client retries elsewhere
        except Exception:  # the lookup failed (the API): SERVFAIL, the client retries
            reply = struct.pack(
                "!HHHHHH", struct.unpack("!H", data[:2])[0], 0x8080 | _SERVFAIL, 0, 0, 0, 0
            )
        if self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    """UDP DNS on ``127.0.0.1:<port>`` answering from ``hosts``, then ``resolve``."""

    def __init__(self, hosts: Mapping[str, str], resolve: Resolve) -> None:
        self.hosts = {k.lower().rstrip("."): v for k, v in hosts.items()}
        self.resolve = resolve
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self.port

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def lookup(self, name: str) -> Sequence[str] | None:
        name = name.rstrip(".")
        if name in self.hosts:
            return [self.hosts[name]]
        return await self.resolve(name)


def envoy_resolver_overlay(port: int) -> dict[str, Any]:
    """Bootstrap fields that make Envoy resolve every DNS cluster with the server on ``port``."""
    config = {
        "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3"
        ".CaresDnsResolverConfig",
        "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": port}}],
        "dns_resolver_options": {"no_default_search_domain": True},
    }
    return {
        "typed_dns_resolver_config": {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": config,
        }
    }


def with_envoy_resolver(argv: Sequence[str], port: int) -> list[str]:
    """An Envoy command line with the agent's resolver merged into its ``--config-yaml`` (or
    one added), unless the bootstrap overlay already chooses a resolver."""
    argv = list(argv)
    overlay = envoy_resolver_overlay(port)
    if "--config-yaml" in argv:
        at = argv.index("--config-yaml") + 1
        given = yaml.safe_load(argv[at]) or {}
        argv[at] = json.dumps({**overlay, **given}, separators=(",", ":"))
        return argv
    return [*argv, "--config-yaml", json.dumps(overlay, separators=(",", ":"))]
