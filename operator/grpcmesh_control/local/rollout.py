"""Traffic only to versions that can take it (pure): local mode's control plane routes a
version's share of calls to it only once it has a ready endpoint.

A live ``apply`` that adds a canary (v1 90 / v2 10) makes the resources say "10 % to v2"
before v2's processes have started; routing by the declared weights alone would answer those
calls "no healthy upstream" until v2 is ready. So while a version with weight has no ready
endpoint and another one has, its weight is set to 0 in what the control plane translates
(Envoy divides by the sum of the remaining weights: their shares grow in proportion). Its
cluster and endpoints stay in the snapshot, so the shift back is a route change only, once
the launcher marks a replica ready (the app answers SERVING, which the kit says only after
its sidecar has its configuration). When no version has a ready endpoint nothing changes:
there is nowhere better to send the calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from grpcmesh_control.mesh.model import Endpoint, MeshService

__all__ = ["route_to_ready"]


def route_to_ready(
    services: Sequence[MeshService], endpoints: Mapping[str, tuple[Endpoint, ...]]
) -> tuple[MeshService, ...]:
    """``services`` with the weight of each version that has no ready endpoint set to 0,
    where another weighted version of the same service has one."""
    return tuple(_gated(svc, endpoints.get(svc.name, ())) for svc in services)


def _gated(svc: MeshService, endpoints: tuple[Endpoint, ...]) -> MeshService:
    ready = {e.version for e in endpoints if e.ready}
    weighted = [v for v in svc.versions if v.weight > 0]
    if all(v.name in ready for v in weighted) or not any(v.name in ready for v in weighted):
        return svc
    return replace(
        svc,
        versions=tuple(v if v.name in ready else replace(v, weight=0) for v in svc.versions),
    )
