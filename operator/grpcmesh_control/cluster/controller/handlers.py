"""kopf handlers, registered on a registry the caller owns (no module-level registry). Each is
thin: it turns kopf's arguments into a call on ``HandlerHost``, the narrow face of the
``Operator`` they see.

No handler requires a finalizer (no ``on.delete``, no daemons or timers): deleting a
MeshService never waits for this operator; its objects go by owner references (GC).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import kopf
from kubernetes_asyncio import client as k8s_client

from grpcmesh_control.cluster.controller.client import (
    MESH_SERVICE,
    api_configuration,
    in_cluster_server,
)
from grpcmesh_control.cluster.controller.descriptors import DESCRIPTOR_SET_LABEL
from grpcmesh_control.cluster.controller.mesh import SERVICE_NAME_LABEL
from grpcmesh_control.cluster.objects import mutate_pod, validate_admission
from grpcmesh_control.cluster.objects.names import INJECT_VALUE, LABEL_INJECT, MANAGED_BY

if TYPE_CHECKING:
    from grpcmesh_control.cluster.controller.mesh import MeshState
    from grpcmesh_control.cluster.controller.reconcile import Reconciler
    from grpcmesh_control.cluster.controller.settings import RuntimeSettings
    from grpcmesh_control.mesh.model import MethodCatalog


class HandlerHost(Protocol):
    """All the handlers may use of the operator (``Operator`` is one): its settings, the mesh
    state, the reconciler, and four notifications. Anything else stays private to it."""

    @property
    def settings(self) -> RuntimeSettings: ...

    @property
    def state(self) -> MeshState: ...

    @property
    def reconciler(self) -> Reconciler: ...

    @property
    def catalog(self) -> MethodCatalog: ...

    def configure_kopf(self, settings: kopf.OperatorSettings) -> None: ...

    async def stopping(self) -> None: ...

    def refresh_status(self, key: tuple[str, str] | None) -> None: ...

    def rollout_changed(self, deployment: Mapping[str, Any], *, deleted: bool = False) -> bool: ...

    def descriptor_set_changed(self, body: Mapping[str, Any], *, deleted: bool = False) -> None: ...


__all__ = [
    "HandlerHost",
    "apply_add_ops",
    "in_cluster_login",
    "inject_sidecar",
    "register_handlers",
    "validate_mesh_service",
]

log = logging.getLogger(__name__)

_GROUP, _VERSION, _PLURAL = MESH_SERVICE.group, MESH_SERVICE.version, MESH_SERVICE.plural
_OWNED = (
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("", "v1", "serviceaccounts"),
    ("apps", "v1", "deployments"),
)
_RETRY_DELAY = 10.0


def in_cluster_login(
    account: kopf.ConnectionInfo, environ: Mapping[str, str]
) -> kopf.ConnectionInfo:
    """kopf's service-account credentials, sent where the kubelet says the API server is
    (``in_cluster_server``) rather than to kopf's fixed ``kubernetes.default.svc``."""
    server = in_cluster_server(environ)
    return dataclasses.replace(account, server=server) if server else account


def register_handlers(registry: kopf.OperatorRegistry, op: HandlerHost) -> None:
    runtime = op.settings

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if runtime.api_server is None and runtime.kubeconfig is None:
            # kopf's own: it re-reads the service account's token when it is rotated. Sent
            # where the kubelet says the API server is, as the operator's own client does.
            account = kopf.login_with_service_account(**kwargs)
            if account is not None:
                return in_cluster_login(account, os.environ)
            return kopf.login_with_kubeconfig(**kwargs)
        return connection_info(await api_configuration(runtime))

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        op.configure_kopf(settings)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await op.stopping()

    # --- MeshService: registration (every event) and reconcile (spec changes) ---------------

    # Event handlers are async though they never await: kopf runs sync handlers in a thread,
    # and MeshState, the publisher and the status follower belong to the operator's loop.
    @kopf.on.event(_GROUP, _VERSION, _PLURAL, registry=registry)
    async def mesh_service_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata") or {}
        if type == "DELETED":
            op.reconciler.forget(str(meta.get("namespace") or ""), str(meta["name"]))
        elif not meta.get("deletionTimestamp"):
            op.state.set_service(_plain(body))

    @kopf.on.resume(_GROUP, _VERSION, _PLURAL, registry=registry)
    @kopf.on.create(_GROUP, _VERSION, _PLURAL, registry=registry)
    @kopf.on.update(_GROUP, _VERSION, _PLURAL, registry=registry)
    async def reconcile(body: kopf.Body, **_: Any) -> None:
        outcome = await op.reconciler.reconcile(_plain(body))
        if outcome is not None and outcome.failures:
            # The status says what failed; retry sooner than the periodic resync.
            raise kopf.TemporaryError("some objects failed to apply", delay=_RETRY_DELAY)

    # --- owned objects: one deleted by hand is recreated ------------------------------------

    for group, version, plural in _OWNED:

        @kopf.on.event(
            group,
            version,
            plural,
            labels={"app.kubernetes.io/managed-by": MANAGED_BY},
            registry=registry,
        )
        async def owned_event(type: str | None, body: kopf.Body, **_: Any) -> None:
            # Only deletions: our own applies also raise MODIFIED events (a loop otherwise).
            key = _controller_key(body.get("metadata") or {})
            if type == "DELETED" and key is not None:
                await op.reconciler.reconcile(key=key)

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={"app.kubernetes.io/managed-by": MANAGED_BY},
        registry=registry,
    )
    async def rollout_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        # A rollout's progress moves Ready: refresh the owner's status when the Deployment's
        # rollout state changed, not on every MODIFIED (our own applies raise those too).
        key = _controller_key(body.get("metadata") or {})
        if key is not None and op.rollout_changed(_plain(body), deleted=type == "DELETED"):
            op.refresh_status(key)

    # --- EndpointSlices of per-version Services -> the registry -----------------------------

    @kopf.on.event(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        labels={SERVICE_NAME_LABEL: kopf.PRESENT},
        registry=registry,
    )
    async def endpoint_slice_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata") or {}
        if type == "DELETED":
            op.state.drop_slice(str(meta.get("namespace") or ""), str(meta["name"]))
        else:
            op.state.set_slice(_plain(body))
        # Endpoint counts and Ready are in its owner's status: refresh it now, not at resync.
        op.refresh_status(op.state.owner_of_slice(body))

    # --- descriptor sets -> the method catalog ----------------------------------------------

    @kopf.on.event(
        "", "v1", "configmaps", labels={DESCRIPTOR_SET_LABEL: kopf.PRESENT}, registry=registry
    )
    async def descriptor_set_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        op.descriptor_set_changed(_plain(body), deleted=type == "DELETED")

    if runtime.webhook_port is None:
        return  # kopf refuses admission handlers without a webhook server

    @kopf.on.validate(
        _GROUP,
        _VERSION,
        _PLURAL,
        id="meshservices",
        operations=["CREATE", "UPDATE"],  # never block a delete
        registry=registry,
    )
    def validate(*, body: kopf.Body, warnings: list[str], **kwargs: Any) -> None:
        validate_mesh_service(op, body, kwargs.get("operation"), warnings)

    @kopf.on.mutate(
        "",
        "v1",
        "pods",
        id="inject",
        operations=["CREATE"],
        labels={LABEL_INJECT: INJECT_VALUE},
        registry=registry,
    )
    def inject(*, body: kopf.Body, patch: kopf.Patch, warnings: list[str], **kwargs: Any) -> None:
        inject_sidecar(op, body, kwargs.get("operation"), patch, warnings)


def connection_info(configuration: k8s_client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the API client's ``Configuration`` (the same server, CA, token
    or client certificate the operator's own client uses)."""
    token = str((configuration.api_key or {}).get("BearerToken") or "")
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        token=token.removeprefix("Bearer ") or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def _controller_key(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the MeshService controlling an owned object, if one does."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == MESH_SERVICE.kind and ref.get("controller"):
            return str(meta.get("namespace") or ""), str(ref.get("name"))
    return None


def validate_mesh_service(
    op: HandlerHost, body: Mapping[str, Any], operation: str | None, warnings: list[str]
) -> None:
    """Admit or deny a MeshService (``kopf.AdmissionError`` denies, with every problem)."""
    response = validate_admission(
        _review(body, operation),
        known_services=op.state.services(),
        catalog=op.catalog,
        settings=op.settings.render,
        missing_backends=op.settings.missing_backends,
    )["response"]
    warnings.extend(response.get("warnings") or [])
    if not response.get("allowed"):
        status = response.get("status") or {}
        raise kopf.AdmissionError(status.get("message"), code=status.get("code"))


def inject_sidecar(
    op: HandlerHost,
    body: Mapping[str, Any],
    operation: str | None,
    patch: kopf.Patch,
    warnings: list[str],
) -> None:
    """Add the sidecar to a labelled pod: ``mutate_pod``'s ops become a body transformation,
    which kopf turns back into the response's JSONPatch."""
    response = mutate_pod(_review(body, operation), settings=op.settings.render)["response"]
    warnings.extend(response.get("warnings") or [])
    if not response.get("allowed"):
        status = response.get("status") or {}
        raise kopf.AdmissionError(status.get("message"), code=status.get("code"))
    encoded = response.get("patch")
    if encoded:
        ops = json_patch_ops(encoded)
        patch.fns.append(lambda raw: apply_add_ops(raw, ops))


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def _review(body: Mapping[str, Any], operation: str | None) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "",
            "operation": operation or "CREATE",
            "namespace": meta.get("namespace"),
            "object": _plain(body),
        },
    }


def json_patch_ops(encoded: str) -> list[dict[str, Any]]:
    ops = json.loads(base64.b64decode(encoded))
    return [op for op in ops if isinstance(op, dict)]


def apply_add_ops(raw: Any, ops: list[dict[str, Any]]) -> None:
    """Apply ``mutate_pod``'s ops (``add`` only: a key, a list item at an index or ``-``)."""
    for op in ops:
        if op.get("op") != "add":
            raise ValueError(f"unsupported JSONPatch op {op.get('op')!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = raw
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        value, last = copy.deepcopy(op["value"]), parts[-1]
        if isinstance(target, list):
            target.append(value) if last == "-" else target.insert(int(last), value)
        else:
            target[last] = value
