"""Admission webhooks as pure functions: an ``AdmissionReview`` (v1) in, its response out.

Validating, for MeshService: the CRD schema and the model's rules (``parse_mesh_service``,
with the method catalog), then what needs the rest of the mesh or the operator's settings:

- the name is not used by a MeshService in another namespace (backends are named without one);
- no gRPC service is already served by another MeshService (the ingress routes by it);
- every backend that is not external names a MeshService (``missing_backends`` decides whether
  that denies or warns: ``kubectl apply -f dir/`` sends resources one by one, so a caller may
  arrive before its backend), and no external backend takes the name of a MeshService;
- the names the operator derives (``<svc>-<version>``) do not collide with another's;
- spec.workload.env does not set the variables the operator owns; requests fit their limits;
- the operator can render it (``desired.render_problems``: reserved ports, App Mesh limits).

Denials carry every problem, each naming its field, in ``status.message`` and as
``status.details.causes`` (what ``kubectl`` prints).

Mutating, for pods labelled ``grpcmesh.io/inject: "true"``: the Envoy native sidecar, its
bootstrap volume (the ``<svc>-envoy-bootstrap`` ConfigMap, which the operator writes for every
MeshService), the sidecar variables on each app container and a default version label. A pod
that already has the sidecar is left alone, so re-invocation is a no-op.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Any

from grpcmesh_control.cluster.objects.desired import render_problems
from grpcmesh_control.cluster.objects.names import (
    INJECT_VALUE,
    LABEL_INJECT,
    LABEL_SERVICE,
    LABEL_VERSION,
    PROXY_CONTAINER,
    version_service_name,
)
from grpcmesh_control.cluster.objects.proxy import (
    pod_local_env,
    proxy_container,
    proxy_volumes,
    sidecar_app_env,
)
from grpcmesh_control.cluster.objects.pss import restricted_violations
from grpcmesh_control.cluster.objects.quantity import parse_quantity
from grpcmesh_control.cluster.objects.settings import OperatorSettings, Provider
from grpcmesh_control.mesh import appenv
from grpcmesh_control.mesh.errors import FieldError, InvalidResource
from grpcmesh_control.mesh.model.catalog import MethodCatalog
from grpcmesh_control.mesh.model.identity import service_account_name
from grpcmesh_control.mesh.model.mesh import DEFAULT_VERSION, MeshService, ResourceList
from grpcmesh_control.mesh.model.parse import parse_mesh_service
from grpcmesh_control.mesh.model.schema import GROUP, KIND

__all__ = ["ADMISSION_API_VERSION", "MissingBackends", "mutate_pod", "validate_admission"]

ADMISSION_API_VERSION = "admission.k8s.io/v1"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_INVALID = 422  # what the API server answers for a schema violation, so kubectl says "Invalid"

Doc = Mapping[str, Any]


class MissingBackends(StrEnum):
    """What a backend that names no MeshService (yet) does to an admission request."""

    DENY = "deny"
    WARN = "warn"


# --- validating ------------------------------------------------------------------------------


def validate_admission(
    review: Doc,
    *,
    known_services: Iterable[MeshService],
    catalog: MethodCatalog | None,
    settings: OperatorSettings | None = None,
    missing_backends: MissingBackends = MissingBackends.WARN,
) -> dict[str, Any]:
    """The response to a MeshService ``AdmissionReview``. ``known_services`` are the mesh's
    MeshServices in every namespace (this one's stored version may be among them: it is
    skipped by namespace/name)."""
    request: Doc = review.get("request") or {}
    uid = str(request.get("uid", ""))
    if request.get("operation") in ("DELETE", "CONNECT"):
        return _review(uid, allowed=True)  # never block a delete
    body = request.get("object")
    if not isinstance(body, Mapping):
        return _deny(uid, InvalidResource(KIND, [FieldError("", "the request has no object")]))
    body = _with_namespace(body, request.get("namespace"))
    try:
        svc = parse_mesh_service(body, catalog=catalog)
    except InvalidResource as exc:
        return _deny(uid, exc)
    spec: Doc = body["spec"]
    others = [s for s in known_services if s.key != svc.key]
    errors: list[FieldError] = [*render_problems(svc, settings or OperatorSettings(), catalog)]
    errors += _workload_problems(svc)
    errors += _name_problems(svc, spec, others)
    warnings: list[str] = []
    for missing, problem in _backend_problems(svc, others):
        if missing and missing_backends is MissingBackends.WARN:
            warnings.append(f"{problem}; not routable until it exists")
        else:
            errors.append(problem)
    if errors:
        return _deny(uid, InvalidResource(f"{KIND} {svc.key}", errors), name=svc.name)
    return _review(uid, allowed=True, warnings=warnings)


def _with_namespace(body: Doc, namespace: object) -> Doc:
    # On create the object may not carry its namespace yet; the request does.
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and not metadata.get("namespace") and namespace:
        return {**body, "metadata": {**metadata, "namespace": namespace}}
    return body


def _workload_problems(svc: MeshService) -> Iterator[FieldError]:
    workload = svc.workload
    if workload is None:
        return
    for i, env in enumerate(workload.env):
        if env.name in appenv.RESERVED:
            yield FieldError(f"spec.workload.env[{i}].name", f"{env.name} is set by the operator")
    for v, version in enumerate(svc.versions):
        for i, env in enumerate(version.env):
            if env.name in appenv.RESERVED:
                yield FieldError(
                    f"spec.versions[{v}].env[{i}].name", f"{env.name} is set by the operator"
                )
    requests, limits = workload.resources.requests, workload.resources.limits
    for name in ("cpu", "memory"):
        request, limit = _quantity(requests, name), _quantity(limits, name)
        if request is not None and limit is not None and request > limit:
            yield FieldError(
                f"spec.workload.resources.requests.{name}",
                f"{getattr(requests, name)} exceeds limits.{name} {getattr(limits, name)}",
            )


def _quantity(resources: ResourceList, name: str) -> Decimal | None:
    text = getattr(resources, name)
    try:
        return None if text is None else parse_quantity(text)
    except ValueError:  # the CRD's pattern admits nothing else; stay total anyway
        return None


def _name_problems(svc: MeshService, spec: Doc, others: list[MeshService]) -> Iterator[FieldError]:
    for other in others:
        if other.name == svc.name:
            yield FieldError(
                "metadata.name",
                f"{svc.name} is already used by {KIND} {other.key} (names are unique in the "
                "mesh: backends are named without a namespace)",
            )
            break
    for i, grpc_service in enumerate(svc.grpc.services):
        owner = next((o for o in others if grpc_service in o.grpc.services), None)
        if owner is not None:
            yield FieldError(
                f"spec.grpc.services[{i}]",
                f"{grpc_service} is already served by {KIND} {owner.key}",
            )
    # Per-version Services are named <svc>-<version>; in one namespace they must not collide
    # with another MeshService's Services.
    neighbours = [o for o in others if o.namespace == svc.namespace]
    taken = {o.name: o for o in neighbours} | {
        version_service_name(o.name, v.name): o for o in neighbours for v in o.versions
    }
    if svc.name in taken:
        owner = taken[svc.name]
        yield FieldError(
            "metadata.name", f"{svc.name} is the name of a Service of {KIND} {owner.key}"
        )
    for i, version in enumerate(svc.versions):
        derived = version_service_name(svc.name, version.name)
        if derived in taken:
            path = f"spec.versions[{i}].name" if "versions" in spec else "spec.workload.version"
            yield FieldError(
                path, f"its Service {derived} is a Service name of {KIND} {taken[derived].key}"
            )


def _backend_problems(
    svc: MeshService, others: list[MeshService]
) -> Iterator[tuple[bool, FieldError]]:
    """``(missing, problem)``: ``missing`` for a backend that names no MeshService (yet)."""
    by_name = {o.name: o for o in others}
    for i, backend in enumerate(svc.backends):
        path = f"spec.backends[{i}].name"
        if backend.external is not None:
            if backend.name in by_name:
                reason = (
                    f"external backend {backend.name} has the name of {KIND} "
                    f"{by_name[backend.name].key}; calls to it would be ambiguous"
                )
                yield False, FieldError(path, reason)
        elif backend.name not in by_name and backend.name != svc.name:
            reason = f"no {KIND} {backend.name} in the mesh (nor external)"
            yield True, FieldError(path, reason)


def _deny(uid: str, error: InvalidResource, *, name: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {
        "causes": [
            {"field": e.path, "message": e.reason, "reason": "FieldValueInvalid"}
            for e in error.errors
        ],
        "group": GROUP,
        "kind": KIND,
    }
    if name is not None:
        details["name"] = name
    status = {
        "code": _INVALID,
        "details": details,
        "message": str(error),
        "reason": "Invalid",
        "status": "Failure",
    }
    return _review(uid, allowed=False, status=status)


def _review(
    uid: str,
    *,
    allowed: bool,
    status: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
    patch: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {"allowed": allowed, "uid": uid}
    if status is not None:
        response["status"] = status
    if warnings:
        response["warnings"] = warnings
    if patch:
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        response["patchType"] = "JSONPatch"
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


# --- mutating --------------------------------------------------------------------------------


def mutate_pod(review: Doc, *, settings: OperatorSettings | None = None) -> dict[str, Any]:
    """The response to a Pod ``AdmissionReview`` (CREATE): a JSONPatch that injects the
    sidecar into labelled pods; no patch for anything else."""
    settings = settings or OperatorSettings()
    request: Doc = review.get("request") or {}
    uid = str(request.get("uid", ""))
    pod = request.get("object")
    if request.get("operation") != "CREATE" or not isinstance(pod, Mapping):
        return _review(uid, allowed=True)
    metadata: Doc = pod.get("metadata") or {}
    labels: Doc = metadata.get("labels") or {}
    if labels.get(LABEL_INJECT) != INJECT_VALUE:
        return _review(uid, allowed=True)
    service = labels.get(LABEL_SERVICE)
    if not isinstance(service, str) or not _is_dns_1035(service):
        field = FieldError(
            f'metadata.labels["{LABEL_SERVICE}"]',
            f"pods labelled {LABEL_INJECT}={INJECT_VALUE} must name their MeshService here",
        )
        return _deny(uid, InvalidResource("Pod", [field]))
    if settings.provider is not Provider.NATIVE:
        return _review(
            uid,
            allowed=True,
            warnings=[f"{LABEL_INJECT}: ignored, the {settings.provider} provider injects"],
        )
    spec: Doc = pod.get("spec") or {}
    if _has_sidecar(spec):
        return _review(uid, allowed=True)
    account = _account_patch(service, spec, settings)
    if isinstance(account, InvalidResource):
        return _deny(uid, account)
    patch = [*_injection(service, labels, spec, settings), *account]
    patched = _apply_spec_ops(spec, patch)
    warnings = [f"not PSS restricted: {v}" for v in restricted_violations(patched, metadata)]
    return _review(uid, allowed=True, patch=patch, warnings=warnings)


_DEFAULT_ACCOUNT = "default"


def _account_patch(
    service: str, spec: Doc, settings: OperatorSettings
) -> list[dict[str, Any]] | InvalidResource:
    """With authenticated xDS the sidecar proves its MeshService by the pod's ServiceAccount,
    which must be the one the operator renders for it: a pod left on the namespace's default
    account is moved to it; a pod naming another is refused (its sidecar would be)."""
    if settings.xds_credential is None:
        return []
    wanted = service_account_name(service)
    named = spec.get("serviceAccountName") or spec.get("serviceAccount") or _DEFAULT_ACCOUNT
    if named == wanted:
        return []
    if named != _DEFAULT_ACCOUNT:
        return InvalidResource(
            "Pod",
            [
                FieldError(
                    "spec.serviceAccountName",
                    f"{named!r}: a pod injected into MeshService {service!r} runs under its "
                    f"ServiceAccount {wanted!r}, which its sidecar proves to the control plane; "
                    "leave it unset",
                )
            ],
        )
    # The deprecated alias, when the API server filled it in, must agree.
    fields = ["serviceAccountName", *(["serviceAccount"] if "serviceAccount" in spec else [])]
    return [_add(f"/spec/{field}", wanted) for field in fields]


def _is_dns_1035(text: str) -> bool:
    return len(text) <= 63 and _DNS_1035.match(text) is not None


def _has_sidecar(spec: Doc) -> bool:
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return any(c.get("name") == PROXY_CONTAINER for c in containers)


def _injection(
    service: str, labels: Doc, spec: Doc, settings: OperatorSettings
) -> Iterator[dict[str, Any]]:
    # First among init containers: other init containers may already need the mesh.
    if spec.get("initContainers"):
        yield _add("/spec/initContainers/0", proxy_container(service, settings))
    else:
        yield _add("/spec/initContainers", [proxy_container(service, settings)])
    volumes = spec.get("volumes") or []
    present = {v.get("name") for v in volumes}
    missing = [v for v in proxy_volumes(service, settings) if v["name"] not in present]
    if missing and volumes:
        for volume in missing:
            yield _add("/spec/volumes/-", volume)
    elif missing:
        yield _add("/spec/volumes", missing)
    wanted = pod_local_env(settings) + sidecar_app_env(settings)
    for i, container in enumerate(spec.get("containers") or []):
        env = container.get("env") or []
        present = {e.get("name") for e in env}
        missing = [e for e in wanted if e["name"] not in present]
        if not missing:
            continue
        if env:
            for entry in missing:
                yield _add(f"/spec/containers/{i}/env/-", entry)
        else:
            yield _add(f"/spec/containers/{i}/env", missing)
    # The control plane learns an endpoint's version from the per-version Services, which
    # select on this label: a pod without it would never be routed to.
    if LABEL_VERSION not in labels:
        yield _add(f"/metadata/labels/{_escape(LABEL_VERSION)}", DEFAULT_VERSION)


def _add(path: str, value: Any) -> dict[str, Any]:
    return {"op": "add", "path": path, "value": value}


def _escape(token: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _apply_spec_ops(spec: Doc, patch: list[dict[str, Any]]) -> dict[str, Any]:
    """``spec`` with the patch's /spec operations applied (only the shapes ``_injection``
    emits: add a list, insert at 0, append), to check the result without a JSONPatch library."""
    out = copy.deepcopy(dict(spec))
    for op in patch:
        parts = op["path"].split("/")[1:]
        if parts[0] != "spec":
            continue
        target: Any = out
        for part in parts[1:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        value = copy.deepcopy(op["value"])
        if isinstance(target, list):
            if last == "-":
                target.append(value)
            else:
                target.insert(int(last), value)
        else:
            target[last] = value
    return out
