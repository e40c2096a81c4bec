"""Container resources: the spec's values, with defaults filling what it leaves out."""

from __future__ import annotations

from typing import Any

from grpcmesh_control.mesh.model.mesh import Resources

__all__ = ["render_resources"]

_NAMES = ("cpu", "memory")


def render_resources(spec: Resources | None, defaults: Resources) -> dict[str, Any]:
    """``requests``/``limits`` per resource name, filled in independently.

    A default never contradicts the spec: a request defaults to the spec's limit when only the
    limit is given (what Kubernetes itself does), and a default limit is added only when the
    spec sets neither a request nor a limit for that resource (a request above the default
    limit would be rejected).
    """
    given = spec or Resources()
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for name in _NAMES:
        request = getattr(given.requests, name)
        limit = getattr(given.limits, name)
        if request is None:
            request = limit if limit is not None else getattr(defaults.requests, name)
        if limit is None and getattr(given.requests, name) is None:
            limit = getattr(defaults.limits, name)
        if request is not None:
            requests[name] = request
        if limit is not None:
            limits[name] = limit
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out
