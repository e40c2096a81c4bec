"""Level-based reconcile of one MeshService: apply what ``desired_objects`` says, prune what it
no longer says, and write the status ``compute_status`` derives from what was observed.

Idempotent: it reads nothing but the MeshService and the API's answers, so any trigger (create,
update, resume, an owned object's event, an endpoint/ACK change, the periodic resync) runs the
same code. Reconciles of one MeshService are serialized by a lock; different ones run
concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from grpcmesh_control.cluster.controller.client import MESH_SERVICE, ApiError, KubeClient
from grpcmesh_control.cluster.controller.mesh import MeshState
from grpcmesh_control.cluster.controller.metrics import OperatorMetrics, ReconcileResult
from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.objects import (
    OWNED_KINDS,
    ApplyFailure,
    EndpointCount,
    Kind,
    Observation,
    OwnerRef,
    Provider,
    SidecarAck,
    WorkloadRollout,
    compute_status,
    desired_objects,
    kind_of,
    object_key,
)
from grpcmesh_control.cluster.objects import kinds as k8s_kinds
from grpcmesh_control.cluster.objects.names import LABEL_SERVICE, MANAGED_BY
from grpcmesh_control.mesh.errors import InvalidNodeId, InvalidResource
from grpcmesh_control.mesh.model import MeshService
from grpcmesh_control.mesh.publisher import Publisher
from grpcmesh_control.mesh.translate import NodeId
from grpcmesh_control.mesh.translate.naming import NodeKind
from grpcmesh_control.mesh.xds import SnapshotCache

__all__ = ["Outcome", "Reconciler", "owned_kinds"]

log = logging.getLogger(__name__)

Key = tuple[str, str]
Obj = dict[str, Any]
EventSink = Callable[[Mapping[str, Any], str, str, str], None]
"""``(involved object, type, reason, message)``; posting is the sink's business."""


def owned_kinds(settings: RuntimeSettings) -> tuple[Kind, ...]:
    """The kinds this operator may have written, so may need to prune."""
    kinds = [
        k8s_kinds.CONFIG_MAP,
        k8s_kinds.SERVICE_ACCOUNT,
        k8s_kinds.SERVICE,
        k8s_kinds.DEPLOYMENT,
    ]
    if settings.render.service_monitor_crd:
        kinds.append(k8s_kinds.SERVICE_MONITOR)
    if settings.render.provider is Provider.APPMESH:
        kinds += [k for k in OWNED_KINDS if k.group == "appmesh.k8s.aws" and k.namespaced]
    return tuple(kinds)


@dataclass(frozen=True)
class Outcome:
    applied: int
    pruned: int
    failures: tuple[ApplyFailure, ...]
    status: Obj
    status_written: bool


class Reconciler:
    def __init__(
        self,
        client: KubeClient,
        state: MeshState,
        publisher: Publisher,
        cache: SnapshotCache,
        settings: RuntimeSettings,
        metrics: OperatorMetrics,
        events: EventSink,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._state = state
        self._publisher = publisher
        self._cache = cache
        self._settings = settings
        self._metrics = metrics
        self._events = events
        self._now = now
        self._bodies: dict[Key, Obj] = {}
        self._locks: dict[Key, asyncio.Lock] = {}

    # --- what is known -----------------------------------------------------------------------

    def known(self) -> list[Key]:
        return sorted(self._bodies)

    def forget(self, namespace: str, name: str) -> None:
        """The MeshService is gone: its objects are the garbage collector's (owner refs)."""
        self._bodies.pop((namespace, name), None)
        self._locks.pop((namespace, name), None)
        self._state.drop_service(namespace, name)

    # --- reconcile ---------------------------------------------------------------------------

    async def reconcile(
        self, body: Mapping[str, Any] | None = None, *, key: Key | None = None
    ) -> Outcome | None:
        """Reconcile the MeshService ``body`` names, or ``key`` (one seen before). It is read
        again first, so a stale trigger acts on the current spec. None when it is gone."""
        if body is not None:
            key = (str(body["metadata"].get("namespace") or ""), str(body["metadata"]["name"]))
            self._bodies[key] = dict(body)
        assert key is not None
        queued = time.perf_counter()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            current = self._bodies.get(key)
            if current is None:
                return None
            started = time.perf_counter()
            self._metrics.queue_latency.observe(started - queued)
            try:
                fresh = await self._client.get(MESH_SERVICE, key[0], key[1])
                if fresh is None or _uid(fresh) != _uid(current):
                    # Deleted (or deleted and recreated) since this trigger: never write
                    # objects for an owner that is gone; the new one brings its own trigger.
                    if fresh is None:
                        self.forget(*key)
                    return None
                self._bodies[key] = fresh
                outcome = await self._reconcile(key, fresh)
            except Exception:
                self._metrics.reconciles.labels(result=ReconcileResult.ERROR.value).inc()
                raise
            finally:
                self._metrics.duration.observe(time.perf_counter() - started)
            ok = not outcome.failures and _condition(outcome.status, "Registered") == "True"
            result = ReconcileResult.OK if ok else ReconcileResult.ERROR
            self._metrics.reconciles.labels(result=result.value).inc()
            return outcome

    async def _reconcile(self, key: Key, body: Obj) -> Outcome:
        namespace, name = key
        svc = self._state.set_service(body)
        spec_error = self._state.spec_error(namespace, name)
        owner = OwnerRef.of(body)
        desired: list[Obj] = []
        if svc is not None:
            try:
                desired = desired_objects(
                    svc,
                    namespace=namespace,
                    owner=owner,
                    settings=self._settings.render,
                    catalog=self._state.catalog,  # the appmesh provider's per-method retries
                )
            except InvalidResource as exc:
                spec_error = str(exc)
        failures: list[ApplyFailure] = []
        workloads: list[WorkloadRollout] = []
        for obj in desired:
            kind = kind_of(obj)
            label = f"{kind.kind}/{obj['metadata']['name']}"
            try:
                written = await self._client.apply(kind, obj)
            except ApiError as exc:
                self._metrics.apply_errors.inc()
                failures.append(ApplyFailure(label, str(exc)))
                log.warning("%s/%s: applying %s failed: %s", namespace, name, label, exc)
                continue
            self._metrics.applied.inc()
            if kind == k8s_kinds.DEPLOYMENT:
                workloads.append(rollout_of(written or obj))
        pruned = 0
        if spec_error is None:  # an invalid spec keeps the last good objects running
            pruned = await self._prune(namespace, name, owner, {object_key(o) for o in desired})
        observation = Observation(
            generation=body["metadata"].get("generation"),
            spec_error=spec_error,
            failures=tuple(failures),
            workloads=tuple(workloads),
            problems=self._problems(svc),
            endpoints=self._endpoint_count(svc),
            sidecars=self._sidecars(svc),
        )
        previous = body.get("status") or {}
        status = compute_status(observation, previous, now=self._now())
        status_written = _without_kopf(previous) != status
        if status_written:
            try:
                await self._client.patch_status(MESH_SERVICE, namespace, name, status)
            except ApiError as exc:
                self._events(body, "Warning", "StatusFailed", str(exc))
                status_written = False
            else:
                body["status"] = {**previous, **status}
                if _conditions(previous) != _conditions(status):
                    # Events on transitions only: a resync of an unchanged state is silent.
                    self._events(body, "Normal", "Reconciled", _summary(status))
                    for failure in failures:
                        message = f"{failure.object}: {failure.message}"
                        self._events(body, "Warning", "ApplyFailed", message)
                    if spec_error is not None:
                        self._events(body, "Warning", "InvalidSpec", spec_error)
        return Outcome(
            len(desired) - len(failures), pruned, tuple(failures), status, status_written
        )

    async def _prune(
        self, namespace: str, name: str, owner: OwnerRef, keep: set[tuple[str, str, str, str]]
    ) -> int:
        labels = {LABEL_SERVICE: name, "app.kubernetes.io/managed-by": MANAGED_BY}
        pruned = 0
        for kind in owned_kinds(self._settings):
            try:
                found = await self._client.list_labelled(kind, namespace, labels)
            except ApiError:
                continue  # e.g. a CRD not installed: nothing of that kind to prune
            for obj in found:
                refs = obj.get("metadata", {}).get("ownerReferences") or []
                ours = any(r.get("uid") == owner.uid and r.get("controller") for r in refs)
                if not ours or object_key(obj) in keep:
                    continue
                if await self._client.delete(kind, namespace, obj["metadata"]["name"]):
                    pruned += 1
                    self._metrics.pruned.inc()
                    self._events(
                        self._bodies.get(
                            (namespace, name), {"metadata": {"name": name, "namespace": namespace}}
                        ),
                        "Normal",
                        "Pruned",
                        f"deleted {kind.kind}/{obj['metadata']['name']}, no longer desired",
                    )
        return pruned

    # --- observations from the control plane ---------------------------------------------------

    def _problems(self, svc: MeshService | None) -> tuple[Any, ...]:
        registry = self._publisher.registry
        if svc is None or registry is None:
            return ()
        return registry.problems_of(svc)

    def _endpoint_count(self, svc: MeshService | None) -> EndpointCount:
        if svc is None:
            return EndpointCount()
        endpoints = self._state.endpoints().get(svc.name, ())
        declared = {v.name for v in svc.versions}
        mine = [e for e in endpoints if e.version in declared]
        return EndpointCount(ready=sum(e.ready for e in mine), total=len(mine))

    def _sidecars(self, svc: MeshService | None) -> tuple[SidecarAck, ...] | None:
        if self._settings.render.provider is not Provider.NATIVE:
            return None
        if svc is None:
            return ()
        acks = []
        for node in self._cache.nodes():
            if not node.connected or _service_of(node.node_id) != svc.name:
                continue
            snapshot = self._cache.snapshot(node.group)
            nack = node.nack
            acks.append(
                SidecarAck(
                    node=node.node_id,
                    served=snapshot.version if snapshot is not None else "",
                    acked=node.acked_snapshot,
                    rejected=None if nack is None else nack.version,
                    error=None if nack is None else nack.message,
                )
            )
        return tuple(sorted(acks, key=lambda a: a.node))


def _service_of(node_id: str) -> str | None:
    try:
        parsed = NodeId.parse(node_id)
    except InvalidNodeId:
        return None
    return parsed.name if parsed.kind is NodeKind.SIDECAR else None


def rollout_of(deployment: Mapping[str, Any]) -> WorkloadRollout:
    """What a Deployment's ``status`` says of its rollout."""
    metadata = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    return WorkloadRollout(
        name=str(metadata.get("name")),
        desired=int(spec.get("replicas", 1)),
        updated=int(status.get("updatedReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        current=generation is None or (observed is not None and observed >= generation),
    )


def _uid(body: Mapping[str, Any]) -> object:
    return (body.get("metadata") or {}).get("uid")


def _without_kopf(status: Mapping[str, Any]) -> dict[str, Any]:
    # kopf keeps its own progress under status.kopf; compare only what compute_status owns.
    return {k: v for k, v in status.items() if k != "kopf"}


def _conditions(status: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        str(c.get("type")): (c.get("status"), c.get("reason"))
        for c in status.get("conditions") or []
        if isinstance(c, Mapping)
    }


def _condition(status: Mapping[str, Any], kind: str) -> str | None:
    found = _conditions(status).get(kind)
    return None if found is None else str(found[0])


def _summary(status: Mapping[str, Any]) -> str:
    return ", ".join(f"{t}={s} ({r})" for t, (s, r) in sorted(_conditions(status).items()))
