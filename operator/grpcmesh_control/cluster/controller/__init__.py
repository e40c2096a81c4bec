"""The operator's edge: kopf handlers, the Kubernetes API client, the registry fed from the
API, and the process that runs them with the xDS control plane. The decisions are in ``k8s``
(pure); this package only gathers inputs and writes results.

- ``operator.Operator.run``: one asyncio loop, one TaskGroup (publisher, resync, status
  follower, event poster, ADS server) around ``kopf.operator`` (all namespaces, liveness
  endpoint; standalone or peering, below).
  ``entry.main`` is ``grpcmesh operator`` (settings from ``GRPCMESH_*``, ``settings.py``).
- ``handlers``: MeshService create/update/resume -> ``Reconciler.reconcile``; every MeshService
  and EndpointSlice event -> ``MeshState`` -> ``Publisher.update``; an owned Service/ConfigMap/
  Deployment deleted -> its owner reconciled (recreated); admission via kopf's WebhookServer.
- ``reconcile``: apply ``desired_objects``, prune owned objects no longer desired, status from
  ``compute_status``. Endpoint changes (EndpointSlice events), a Deployment's rollout progress
  and sidecar connects/ACKs/NACKs (the cache's listener) mark their MeshService; the status
  follower reconciles it after a short debounce (``status_debounce``). The periodic resync
  (``resync_interval``) is the safety net.
- ``client``: the one API boundary; every failure becomes ``ApiError``.

Server-side apply vs emulators: ``ApplyStrategy.SERVER_SIDE`` (default, for real clusters)
PATCHes ``application/apply-patch+yaml`` with ``fieldManager=grpcmesh-operator&force=true``;
every other write names the same field manager. ``CREATE_OR_MERGE`` (POST, then merge-patch on
409) serves emulators without server-side apply (kmock, in the benchmark). Pruning lists with a
``labelSelector`` and re-filters client-side by labels and the controller owner reference's
uid: redundant on a real server, needed on kmock (it ignores selectors).

No finalizers: deleting a MeshService never waits for the operator; its objects carry a
controller owner reference and the garbage collector deletes them. kopf keeps its progress in
``grpcmesh.io/*`` annotations, not in ``status``.

Peering: one active replica. Without ``peering`` (``GRPCMESH_PEERING``) kopf runs
``--standalone`` (local, dev). With it, kopf peers through that ``ClusterKopfPeering``: the
highest-priority live replica handles events, lower ones pause their watches (equal
priorities all pause), and their resync and status follower (``peering.peering_active``).
During a handover Envoys keep their last config; the new active replica resumes every
MeshService and serves the same content-hashed versions.
"""

from grpcmesh_control.cluster.controller.client import ApiError, Conflict, KubeClient, NotFound
from grpcmesh_control.cluster.controller.mesh import MeshState, slice_endpoints
from grpcmesh_control.cluster.controller.operator import Operator, run_operator
from grpcmesh_control.cluster.controller.reconcile import Outcome, Reconciler
from grpcmesh_control.cluster.controller.settings import ApplyStrategy, RuntimeSettings

__all__ = [
    "ApiError",
    "ApplyStrategy",
    "Conflict",
    "KubeClient",
    "MeshState",
    "NotFound",
    "Operator",
    "Outcome",
    "Reconciler",
    "RuntimeSettings",
    "run_operator",
    "slice_endpoints",
]
