"""Every namespaced kind ``desired_objects`` may render is also one the reconciler prunes: a
kind missing from the prune list leaves orphans behind (a ServiceAccount once did)."""

from __future__ import annotations

from grpcmesh_control.cluster.controller.reconcile import owned_kinds
from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.objects import OWNED_KINDS, OperatorSettings, Provider


def test_every_namespaced_rendered_kind_is_pruned() -> None:
    everything = RuntimeSettings(
        render=OperatorSettings(provider=Provider.APPMESH, service_monitor_crd=True)
    )
    assert set(owned_kinds(everything)) == {k for k in OWNED_KINDS if k.namespaced}
    native = set(owned_kinds(RuntimeSettings()))
    assert {k.kind for k in native} == {"ConfigMap", "ServiceAccount", "Service", "Deployment"}
