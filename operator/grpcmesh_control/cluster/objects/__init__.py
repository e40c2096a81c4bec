"""The operator's pure core: MeshService -> the Kubernetes objects it needs, its status, the
admission webhooks' answers, and the App Mesh provider's resources. No API calls; imports
neither kopf nor grpc (the kopf handlers that apply these live at the edge)."""

from grpcmesh_control.cluster.objects.admission import (
    MissingBackends,
    mutate_pod,
    validate_admission,
)
from grpcmesh_control.cluster.objects.appmesh import appmesh_objects
from grpcmesh_control.cluster.objects.desired import desired_objects, render_problems
from grpcmesh_control.cluster.objects.kinds import OWNED_KINDS, Kind, kind_of, object_key
from grpcmesh_control.cluster.objects.meta import OwnerRef
from grpcmesh_control.cluster.objects.pss import read_only_root_violations, restricted_violations
from grpcmesh_control.cluster.objects.settings import (
    AppDefaults,
    AppMeshSettings,
    EgressFilter,
    OperatorSettings,
    Provider,
    ProxySettings,
)
from grpcmesh_control.cluster.objects.status import (
    ApplyFailure,
    ConditionStatus,
    ConditionType,
    EndpointCount,
    Observation,
    Reason,
    SidecarAck,
    WorkloadRollout,
    compute_status,
)

__all__ = [
    "OWNED_KINDS",
    "AppDefaults",
    "AppMeshSettings",
    "ApplyFailure",
    "ConditionStatus",
    "ConditionType",
    "EgressFilter",
    "EndpointCount",
    "Kind",
    "MissingBackends",
    "Observation",
    "OperatorSettings",
    "OwnerRef",
    "Provider",
    "ProxySettings",
    "Reason",
    "SidecarAck",
    "WorkloadRollout",
    "appmesh_objects",
    "compute_status",
    "desired_objects",
    "kind_of",
    "mutate_pod",
    "object_key",
    "read_only_root_violations",
    "render_problems",
    "restricted_violations",
    "validate_admission",
]
