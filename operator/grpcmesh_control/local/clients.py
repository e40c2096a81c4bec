"""Clients the launcher and the CLI use: the control plane's admin API, Envoy's admin, and the
apps' grpc.health.v1. Create them inside the running event loop (aio objects bind to it)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpcmesh_control.local import credential
from grpcmesh_control.mesh.errors import MeshError

__all__ = [
    "AdminUnavailable",
    "ApplyResult",
    "ControlPlaneClient",
    "HealthProbe",
    "NotConverged",
    "http_ok",
    "wait_converged",
]

HEALTH_CHECK_TIMEOUT_S = 1.0


class AdminUnavailable(MeshError, ConnectionError):
    """The control plane's admin API did not answer."""


class NotConverged(MeshError, TimeoutError):
    """Some proxies did not connect and ACK, in time, a snapshot holding the ready endpoints."""


@dataclass(frozen=True)
class ApplyResult:
    ok: bool
    message: str


class ControlPlaneClient:
    """The admin HTTP API (``docs/design/local-mode.md``): /healthz, /status, POST /apply.

    ``token`` is the mesh's credential (``local.credential``), sent on every request; the
    open endpoints ignore it, ``/apply`` and ``/debug/*`` refuse requests without it."""

    def __init__(
        self, admin_address: str, *, token: str | None = None, timeout_s: float = 5.0
    ) -> None:
        self.base = f"http://{admin_address}"
        self._headers = {} if token is None else credential.headers(token)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use ControlPlaneClient as an async context manager")
        return self._session

    async def healthy(self) -> bool:
        try:
            async with self.session.get(f"{self.base}/healthz") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def status(self) -> dict[str, Any]:
        try:
            async with self.session.get(f"{self.base}/status") as response:
                response.raise_for_status()
                doc: dict[str, Any] = await response.json()
                return doc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminUnavailable(f"control plane at {self.base}: {exc!r}") from None

    async def apply(
        self, filename: str, text: str, descriptors: Mapping[str, bytes] | None = None
    ) -> ApplyResult:
        """POST /apply: the MeshService file and the descriptor sets (file name -> content)
        its services' protos are in, as one multipart request. ``ok`` False carries the
        control plane's own error message."""
        form = aiohttp.FormData()
        form.add_field(
            "resource", text.encode(), filename=filename, content_type="application/yaml"
        )
        for name, data in sorted((descriptors or {}).items()):
            form.add_field(
                "descriptors", data, filename=name, content_type="application/octet-stream"
            )
        return await self._change("/apply", data=form)

    async def delete(self, name: str) -> ApplyResult:
        """POST /delete. ``ok`` False carries the control plane's own error message."""
        return await self._change("/delete", json={"name": name})

    async def rotation(self) -> dict[str, Any]:
        """GET /ca/rotation: the root rotation's phase, roots and the nodes not caught up."""
        return (await self._rotation_request("GET", None))[1]

    async def rotate(self, phase: str) -> tuple[bool, dict[str, Any]]:
        """POST /ca/rotation: take step ``phase``. (False, the document with ``error`` and
        ``pending``) when the control plane refused it (409: nodes not caught up, or a step
        out of order)."""
        return await self._rotation_request("POST", {"phase": phase})

    async def _rotation_request(
        self, method: str, body: dict[str, str] | None
    ) -> tuple[bool, dict[str, Any]]:
        url = f"{self.base}/ca/rotation"
        try:
            async with self.session.request(method, url, json=body) as response:
                text = await response.text()
                if response.status in (200, 409):
                    doc: dict[str, Any] = json.loads(text)
                    return response.status == 200, doc
                raise AdminUnavailable(
                    f"{method} /ca/rotation: HTTP {response.status}: {_error_message(text)[:500]}"
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminUnavailable(f"control plane at {self.base}: {exc!r}") from None

    async def _change(self, path: str, **request: Any) -> ApplyResult:
        try:
            async with self.session.post(f"{self.base}{path}", **request) as response:
                body = await response.text()
                if response.status == 200:
                    return ApplyResult(True, body)
                if response.status in (400, 401):
                    return ApplyResult(False, _error_message(body))
                raise AdminUnavailable(f"POST {path}: HTTP {response.status}: {body[:500]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminUnavailable(f"control plane at {self.base}: {exc!r}") from None


def _error_message(body: str) -> str:
    """The ``error`` of the control plane's JSON answer, else the body as it came."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, str) else body


async def http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    """GET ``url`` answered 200 (Envoy's /ready, say); False on any connection problem."""
    try:
        async with session.get(url) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_converged(
    admin_address: str,
    node_ids: Sequence[str],
    *,
    ready_endpoints: Mapping[str, int] | None = None,
    timeout_s: float = 30.0,
) -> dict[str, str]:
    """Wait until every node is connected and has ACKed its current snapshot; returns node id
    -> ACKed version. Raises ``NotConverged`` naming what is missing.

    ``ready_endpoints`` (service name -> ready endpoints the launcher published) also waits
    for the control plane to have read those endpoints and built the snapshots from them: a
    replica is ready in the run state before the control plane has pushed its endpoint, and
    a call in that gap finds "no healthy upstream" in its caller's sidecar."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with ControlPlaneClient(admin_address) as client:
        while True:
            try:
                doc = await client.status()
            except AdminUnavailable:
                doc = {}
            acked = {
                str(node["id"]): str(node["acked_version"])
                for node in doc.get("nodes", [])
                if node.get("connected")
                and node.get("acked_version")
                and node.get("acked_version") == node.get("snapshot_version")
            }
            missing = [n for n in node_ids if n not in acked]
            if ready_endpoints is not None:
                missing += _endpoints_not_built(doc, ready_endpoints)
            if not missing:
                return {n: acked[n] for n in node_ids}
            if loop.time() > deadline:
                raise NotConverged(
                    f"not connected or not ACKed after {timeout_s:g}s: {', '.join(missing)}"
                )
            await asyncio.sleep(0.1)


def _endpoints_not_built(status: Mapping[str, Any], ready: Mapping[str, int]) -> list[str]:
    """What of ``ready`` the control plane's published snapshots do not hold yet (``/status``:
    its services' counts are of the newest inputs, built once ``version`` equals
    ``inputs_version``)."""
    if not status or status.get("version") != status.get("inputs_version"):
        return ["the control plane's snapshots of the newest endpoints"]
    published: Counter[str] = Counter()
    for service in status.get("services", []):  # one name may be in several namespaces
        published[service["name"]] += service["endpoints"]["ready"]
    return [
        f"{name}'s {count} ready endpoints"
        for name, count in sorted(ready.items())
        if published.get(name, 0) < count
    ]


class HealthProbe:
    """grpc.health.v1 Check on one app (the overall service ""), over one reused channel."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None

    async def serving(self) -> bool:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_CHECK_TIMEOUT_S
            )
        except (TimeoutError, grpc.aio.AioRpcError):
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
