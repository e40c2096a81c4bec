"""The one place the operator talks to the Kubernetes API itself (kopf does its own watching).

Every failure leaves this module as ``ApiError`` (``NotFound``, ``Conflict`` are the ones callers
branch on), whether kubernetes-asyncio raised it or the connection failed.

Writing owned objects (``apply``) follows ``ApplyStrategy``: server-side apply for a real API
server; create-then-merge-patch for emulators without it (kmock). Listing by labels always also
filters client-side, which is redundant on a real server and required on kmock (it ignores
``labelSelector``), so one code path serves both.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from grpcmesh_control.cluster.controller.settings import ApplyStrategy, RuntimeSettings
from grpcmesh_control.cluster.objects.kinds import Kind
from grpcmesh_control.mesh.errors import MeshError
from grpcmesh_control.mesh.model.schema import GROUP, KIND, VERSION

__all__ = [
    "MESH_SERVICE",
    "ApiError",
    "Conflict",
    "KubeClient",
    "NotFound",
    "api_configuration",
    "in_cluster_server",
]

MESH_SERVICE = Kind(GROUP, VERSION, KIND, "meshservices")
_EVENT = Kind("", "v1", "Event", "events")

Obj = dict[str, Any]
_JSON = {200: "object", 201: "object"}
_WRITES = frozenset({"POST", "PATCH", "PUT"})


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server as a pod reaches it, ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_
    SERVICE_PORT`` (the kubelet sets both in every container), as kubernetes-asyncio's
    in-cluster config and client-go read it; None outside a pod. kopf's own service-account
    login dials ``kubernetes.default.svc`` instead, which needs cluster DNS: both of the
    operator's clients must reach the API server the same way."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class ApiError(MeshError):
    """An API request failed; ``status`` is the HTTP status (0: no response)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"{status}: {message}" if status else message)


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


def _translate(exc: Exception) -> ApiError:
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = str(exc.reason)
        with contextlib.suppress(TypeError, ValueError, AttributeError):
            message = json.loads(exc.body or b"{}").get("message") or message
        kind = {404: NotFound, 409: Conflict}.get(status, ApiError)
        return kind(status, message)
    return ApiError(0, f"{type(exc).__name__}: {exc}")


def path_of(kind: Kind, namespace: str | None, name: str | None = None) -> str:
    base = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    if kind.namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{kind.plural}"
    return f"{base}/{name}" if name else base


async def api_configuration(settings: RuntimeSettings) -> k8s_client.Configuration:
    """Where the API server is and how to authenticate: the one choice both this client and
    kopf's login (``handlers``) make from ``settings``."""
    if settings.api_server is not None:
        configuration = k8s_client.Configuration(host=settings.api_server)
        configuration.verify_ssl = False
        return configuration
    configuration = k8s_client.Configuration()
    if settings.kubeconfig is not None:
        await k8s_config.load_kube_config(
            config_file=str(settings.kubeconfig), client_configuration=configuration
        )
        return configuration
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        await k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


class KubeClient:
    """Generic, dict-in dict-out access to the kinds the operator owns. Create inside the
    running loop (``connect``); ``close`` when done."""

    def __init__(self, api: k8s_client.ApiClient, settings: RuntimeSettings) -> None:
        self._api = api
        self._strategy = settings.apply_strategy
        self._field_manager = settings.field_manager

    @classmethod
    async def connect(cls, settings: RuntimeSettings) -> KubeClient:
        api = k8s_client.ApiClient(await api_configuration(settings))
        api.user_agent = settings.field_manager  # who is calling, in the API server's logs
        return cls(api, settings)

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        query = list(query or [])
        if method in _WRITES and not any(k == "fieldManager" for k, _ in query):
            # Every write names its manager: otherwise the API records the client library's
            # user agent as the owner of the fields (in managedFields, and to SSA conflicts).
            query.append(("fieldManager", self._field_manager))
        try:
            result = await self._api.call_api(
                path,
                method,
                query_params=query,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                response_types_map=_JSON,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except (ApiException, aiohttp.ClientError, OSError) as exc:
            raise _translate(exc) from exc
        return result if isinstance(result, dict) else {}

    # --- owned objects -----------------------------------------------------------------------

    async def apply(self, kind: Kind, obj: Mapping[str, Any]) -> Obj:
        """Make ``obj`` (a full desired object) what the API holds for the fields we manage."""
        metadata = obj["metadata"]
        namespace, name = metadata.get("namespace"), metadata["name"]
        if self._strategy is ApplyStrategy.SERVER_SIDE:
            return await self._call(
                "PATCH",
                path_of(kind, namespace, name),
                body=obj,
                query=[("fieldManager", self._field_manager), ("force", "true")],
                content_type="application/apply-patch+yaml",
            )
        try:
            return await self._call("POST", path_of(kind, namespace), body=obj)
        except Conflict:
            return await self._call(
                "PATCH",
                path_of(kind, namespace, name),
                body=obj,
                content_type="application/merge-patch+json",
            )

    async def create(self, kind: Kind, obj: Mapping[str, Any]) -> Obj:
        """POST ``obj``; ``Conflict`` when it exists already."""
        return await self._call("POST", path_of(kind, obj["metadata"].get("namespace")), body=obj)

    async def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: object,
        content_type: str = "application/merge-patch+json",
    ) -> Obj:
        """PATCH with ``content_type`` (merge patch, or ``application/json-patch+json``).
        A merge patch carrying ``metadata.resourceVersion`` is refused with ``Conflict`` when
        the object changed since that version (optimistic concurrency)."""
        return await self._call(
            "PATCH", path_of(kind, namespace, name), body=body, content_type=content_type
        )

    async def get(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        try:
            return await self._call("GET", path_of(kind, namespace, name))
        except NotFound:
            return None

    async def list_objects(
        self, kind: Kind, namespace: str | None, selector: str = ""
    ) -> list[Obj]:
        """Every object of ``kind`` (in ``namespace``, or all), filtered by ``selector`` (a
        label selector) on the server. Items carry ``apiVersion`` and ``kind``: a real API
        server leaves them out of list items (the list names them once), as kubectl restores."""
        query = [("labelSelector", selector)] if selector else []
        listing = await self._call("GET", path_of(kind, namespace), query=query)
        typed = {"apiVersion": kind.api_version, "kind": kind.kind}
        return [typed | item for item in listing.get("items") or [] if isinstance(item, dict)]

    async def list_labelled(
        self, kind: Kind, namespace: str | None, labels: Mapping[str, str]
    ) -> list[Obj]:
        """Objects carrying every label in ``labels`` (selector sent, and re-checked here)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return [
            item
            for item in await self.list_objects(kind, namespace, selector)
            if all(
                (item.get("metadata", {}).get("labels") or {}).get(k) == v
                for k, v in labels.items()
            )
        ]

    async def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        """Delete in the background (dependents via GC); False if it was already gone."""
        try:
            await self._call(
                "DELETE",
                path_of(kind, namespace, name),
                query=[("propagationPolicy", "Background")],
            )
        except NotFound:
            return False
        return True

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Obj) -> None:
        """Merge-patch the status subresource (status is ours alone: no field ownership)."""
        await self._call(
            "PATCH",
            path_of(kind, namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    async def create_event(
        self,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        now: datetime,
    ) -> None:
        """A core/v1 Event about ``involved`` (what ``kubectl describe`` shows)."""
        metadata = involved.get("metadata") or {}
        namespace = str(metadata.get("namespace") or "default")
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            # As client-go's recorder names them: unique per object and moment.
            "metadata": {
                "name": f"{metadata.get('name')}.{time.time_ns():x}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": metadata.get("name"),
                "namespace": namespace,
                "uid": metadata.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._field_manager},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._call("POST", path_of(_EVENT, namespace), body=event)
