"""One probe attempt, as the kubelet makes it: httpGet, tcpSocket, grpc or exec, against the
pod IP (or ``httpGet.host``), bounded by ``timeoutSeconds``. True means success."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ProbeTiming", "probe_once", "resolve_port"]

Exec = Callable[[Sequence[str], float], Awaitable[int]]


class ProbeTiming:
    """A probe's timing fields with the Kubernetes defaults."""

    def __init__(self, probe: Mapping[str, Any]) -> None:
        self.initial_delay = float(probe.get("initialDelaySeconds", 0))
        self.period = float(probe.get("periodSeconds", 10))
        self.timeout = float(probe.get("timeoutSeconds", 1))
        self.success_threshold = int(probe.get("successThreshold", 1))
        self.failure_threshold = int(probe.get("failureThreshold", 3))


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"probe port {port!r} names no port of container {container.get('name')}")


async def _http(spec: Mapping[str, Any], host: str, port: int, timeout: float) -> bool:
    scheme = str(spec.get("scheme", "HTTP")).lower()
    path = str(spec.get("path", "/"))
    headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
    headers.setdefault("User-Agent", "kube-probe/1.36")
    url = f"{scheme}://{spec.get('host') or host}:{port}{path}"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    # The kubelet does not verify a probe's TLS certificate.
    connector = aiohttp.TCPConnector(ssl=False)
    async with (
        aiohttp.ClientSession(timeout=client_timeout, connector=connector) as session,
        session.get(url, headers=headers, allow_redirects=False) as response,
    ):
        return 200 <= response.status < 400


async def _tcp(host: str, port: int, timeout: float) -> bool:
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _grpc(spec: Mapping[str, Any], host: str, port: int, timeout: float) -> bool:
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=str(spec.get("service", "")))
        reply = await stub.Check(request, timeout=timeout)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def probe_once(
    probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str, run_exec: Exec
) -> bool:
    timeout = ProbeTiming(probe).timeout
    try:
        if "httpGet" in probe:
            spec = probe["httpGet"]
            return await _http(spec, pod_ip, resolve_port(spec["port"], container), timeout)
        if "tcpSocket" in probe:
            spec = probe["tcpSocket"]
            host = str(spec.get("host") or pod_ip)
            return await _tcp(host, resolve_port(spec["port"], container), timeout)
        if "grpc" in probe:
            spec = probe["grpc"]
            return await _grpc(spec, pod_ip, int(spec["port"]), timeout)
        if "exec" in probe:
            return await run_exec(list(probe["exec"]["command"]), timeout) == 0
    except (OSError, TimeoutError, aiohttp.ClientError, grpc.aio.AioRpcError):
        return False
    raise ValueError(f"probe has no handler: {sorted(probe)}")
