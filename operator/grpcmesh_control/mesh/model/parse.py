"""MeshService documents -> ``MeshService`` values, or one ``InvalidResource`` naming every problem.

Two passes: the CRD's openAPIV3Schema (strict, see ``schema.strict_schema``), then the rules a
structural schema cannot express (cross-field checks, uniqueness, the method catalog). The
second pass only runs on schema-valid documents, so it can index without defensive checks.
``status`` is ignored: the operator writes it, users do not.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from functools import cache
from typing import Any, cast

# No stubs for jsonschema in the environment yet (types-jsonschema would add them).
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError
from jsonschema.validators import extend

from grpcmesh_control.mesh.errors import FieldError, InvalidResource
from grpcmesh_control.mesh.model.bounds import bounds_error, load_yaml_documents
from grpcmesh_control.mesh.model.catalog import MethodCatalog
from grpcmesh_control.mesh.model.durations import DURATION_PATTERN, parse_duration
from grpcmesh_control.mesh.model.mesh import (
    DEFAULT_VERSION,
    AllowedCalls,
    Authorization,
    AuthorizationRule,
    Backend,
    Callers,
    CircuitBreaker,
    Endpoint,
    EnvVar,
    ExternalHost,
    FaultAbort,
    FaultDelay,
    FaultInjection,
    GrpcCode,
    GrpcSpec,
    KeyRef,
    LoadBalancer,
    MeshService,
    MethodPolicy,
    MtlsMode,
    OutlierDetection,
    ResourceList,
    Resources,
    RetryBudget,
    RetryOn,
    RetryOverride,
    RetryPolicy,
    TrafficPolicy,
    VersionTarget,
    Workload,
)
from grpcmesh_control.mesh.model.schema import API_VERSION, KIND, default_strict_schema

__all__ = ["parse_endpoint", "parse_mesh_service", "parse_mesh_services_yaml"]

# Service names become Kubernetes Service names and :authority values: DNS-1035 labels.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# Kubernetes' label and annotation rules (apimachinery's validation): a key is a qualified
# name, [DNS-1123 subdomain prefix "/"] name; a label value is empty or a name-like string.
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_NAME_MAX = 63
_PREFIX_MAX = 253
_ANNOTATIONS_MAX_BYTES = 256 * 1024

Doc = Mapping[str, Any]


def parse_mesh_service(
    doc: object,
    *,
    source: str | None = None,
    catalog: MethodCatalog | None = None,
    schema: Mapping[str, Any] | None = None,
) -> MeshService:
    """Validate and convert one MeshService document.

    ``source`` names where it came from (a file path) for the error message; ``catalog``, when
    given, checks per-method names against the protos; ``schema`` replaces the CRD's strict
    schema (tests). Raises ``InvalidResource`` listing every problem found.
    """
    label = _label(doc, source)
    if not isinstance(doc, Mapping):
        raise InvalidResource(label, [FieldError("", "a MeshService document must be a mapping")])
    too_large = bounds_error(doc)
    if too_large is not None:
        raise InvalidResource(label, [too_large])
    body = {key: value for key, value in doc.items() if key != "status"}
    problems = list(_schema_errors(body, schema))
    if not problems:
        problems = list(_semantic_errors(body, catalog))
    if problems:
        raise InvalidResource(label, problems)
    return _build(body)


def parse_mesh_services_yaml(
    text: str, *, source: str, catalog: MethodCatalog | None = None
) -> tuple[MeshService, ...]:
    """Every MeshService in a (multi-document) YAML text; empty documents are skipped."""
    docs = load_yaml_documents(text, source=source)
    return tuple(parse_mesh_service(doc, source=source, catalog=catalog) for doc in docs)


def parse_endpoint(doc: Mapping[str, Any]) -> Endpoint:
    """An endpoint from ``{address, port, version, ready?}`` (local mode and test fixtures)."""
    return Endpoint(
        address=str(doc["address"]),
        port=int(doc["port"]),
        version=str(doc.get("version", DEFAULT_VERSION)),
        ready=bool(doc.get("ready", True)),
    )


# --- pass 1: the CRD schema -------------------------------------------------------------------


# Draft 4 is the JSON Schema dialect OpenAPI v3.0 (and so the CRD schema) is based on. Any
# Mapping is an object, so read-only views (kopf's bodies, MappingProxyType) validate too.
_Validator = extend(  # type: ignore[no-untyped-call]
    Draft4Validator,
    type_checker=Draft4Validator.TYPE_CHECKER.redefine(
        "object", lambda _checker, instance: isinstance(instance, Mapping)
    ),
)


@cache
def _default_validator() -> Any:
    return _Validator(default_strict_schema())


def _schema_errors(body: Doc, schema: Mapping[str, Any] | None) -> Iterator[FieldError]:
    validator = _default_validator() if schema is None else _Validator(schema)
    for error in validator.iter_errors(body):
        yield from _field_errors(error)


def _field_errors(error: ValidationError) -> Iterator[FieldError]:
    path = _path(error.absolute_path)
    instance = error.instance
    if error.validator == "required" and isinstance(instance, Mapping):
        for name in cast(list[str], error.validator_value):
            if name not in instance:
                yield FieldError(_join(path, name), "required field is missing")
    elif error.validator == "additionalProperties" and isinstance(instance, Mapping):
        known = error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {}
        for name in instance:
            if name not in known:
                yield FieldError(_join(path, str(name)), _unknown_field(str(name), known))
    elif error.validator == "pattern" and error.validator_value == DURATION_PATTERN:
        yield FieldError(path, f"{instance!r} is not a duration (e.g. 250ms, 2s, 1m30s)")
    else:
        yield FieldError(path, error.message)


def _unknown_field(name: str, known: Iterable[str]) -> str:
    """The reason for an unknown field: it names the closest field the schema knows at that
    place, if one is close (a typo, or the wrong case: ``perTryTimout``, ``retryon``)."""
    by_folded = {field.lower(): field for field in known}
    close = difflib.get_close_matches(name.lower(), list(by_folded), n=1, cutoff=0.6)
    return f"unknown field (did you mean {by_folded[close[0]]}?)" if close else "unknown field"


def _path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _label(doc: object, source: str | None) -> str:
    resource = None
    if isinstance(doc, Mapping) and isinstance(doc.get("metadata"), Mapping):
        name = doc["metadata"].get("name")
        namespace = doc["metadata"].get("namespace") or "default"
        if isinstance(name, str) and isinstance(namespace, str):
            resource = f"{KIND} {namespace}/{name}"
    if source and resource:
        return f"{source} ({resource})"
    return source or resource or KIND


# --- pass 2: rules the schema cannot express ----------------------------------------------------


def _semantic_errors(body: Doc, catalog: MethodCatalog | None) -> Iterator[FieldError]:
    if body.get("apiVersion") != API_VERSION:
        yield FieldError("apiVersion", f"must be {API_VERSION}, not {body.get('apiVersion')!r}")
    if body.get("kind") != KIND:
        yield FieldError("kind", f"must be {KIND}, not {body.get('kind')!r}")
    yield from _metadata_errors(body.get("metadata"))
    spec: Doc = body["spec"]
    services: list[str] = spec["grpc"]["services"]
    yield from _duplicates("spec.grpc.services", services)
    workload = spec.get("workload")
    if workload is not None:
        yield from _duplicates("spec.workload.env", [e["name"] for e in workload.get("env", [])])
        for i, env in enumerate(workload.get("env", [])):
            yield from _env_errors(f"spec.workload.env[{i}]", env)
    yield from _duplicates("spec.backends", [b["name"] for b in spec.get("backends", [])])
    yield from _duplicates("spec.methods", [m["name"] for m in spec.get("methods", [])])
    for i, method in enumerate(spec.get("methods", [])):
        yield from _method_errors(f"spec.methods[{i}].name", method["name"], services, catalog)
    authorization = spec.get("authorization")
    if authorization is not None:
        yield from _authorization_errors(authorization, services, catalog)
    versions = spec.get("versions")
    if versions is not None:
        yield from _duplicates("spec.versions", [v["name"] for v in versions])
        total = sum(v["weight"] for v in versions)
        if total != 100:
            yield FieldError("spec.versions", f"weights sum to {total}, must be 100")
        if workload is not None and "version" in workload:
            yield FieldError(
                "spec.workload.version",
                "must not be set together with spec.versions (name each version there)",
            )
        for i, version in enumerate(versions):
            yield from _version_errors(f"spec.versions[{i}]", version)
    yield from _duration_errors(spec)
    for key in spec.get("config", {}):
        if not _CONFIG_KEY.match(key) or len(key) > 253:
            yield FieldError(f"spec.config.{key}", "not a valid ConfigMap key ([-._a-zA-Z0-9]+)")


# Envoy refuses zero for these (proto validation "gt: 0"); "0s" means "none" elsewhere.
_POSITIVE_DURATIONS = frozenset(
    {
        "spec.trafficPolicy.connectTimeout",
        "spec.trafficPolicy.outlierDetection.interval",
        "spec.trafficPolicy.outlierDetection.baseEjectionTime",
    }
)


def _duration_errors(spec: Doc) -> Iterator[FieldError]:
    for path, text in _durations(spec):
        try:
            value = parse_duration(text)
        except ValueError as exc:  # the pattern held, so it is too long
            yield FieldError(path, str(exc))
            continue
        positive = path in _POSITIVE_DURATIONS or path.endswith(".fault.delay.fixedDelay")
        if positive and value <= timedelta(0):
            yield FieldError(path, f"{text!r} must be greater than zero")


def _durations(spec: Doc) -> Iterator[tuple[str, str]]:
    """(path, text) of every duration set in ``spec``."""
    policy = spec.get("trafficPolicy", {})
    outlier = policy.get("outlierDetection", {})
    candidates = [
        ("spec.trafficPolicy.timeout", policy.get("timeout")),
        ("spec.trafficPolicy.connectTimeout", policy.get("connectTimeout")),
        (
            "spec.trafficPolicy.retries.perTryTimeout",
            policy.get("retries", {}).get("perTryTimeout"),
        ),
        ("spec.trafficPolicy.outlierDetection.interval", outlier.get("interval")),
        ("spec.trafficPolicy.outlierDetection.baseEjectionTime", outlier.get("baseEjectionTime")),
        (
            "spec.trafficPolicy.fault.delay.fixedDelay",
            policy.get("fault", {}).get("delay", {}).get("fixedDelay"),
        ),
    ]
    for i, method in enumerate(spec.get("methods", [])):
        candidates += [
            (f"spec.methods[{i}].timeout", method.get("timeout")),
            (
                f"spec.methods[{i}].retries.perTryTimeout",
                method.get("retries", {}).get("perTryTimeout"),
            ),
            (
                f"spec.methods[{i}].fault.delay.fixedDelay",
                method.get("fault", {}).get("delay", {}).get("fixedDelay"),
            ),
        ]
    yield from ((path, text) for path, text in candidates if text is not None)


def _metadata_errors(metadata: object) -> Iterator[FieldError]:
    if not isinstance(metadata, Mapping) or "name" not in metadata:
        yield FieldError("metadata.name", "required field is missing")
        return
    name = metadata["name"]
    if not isinstance(name, str) or len(name) > 63 or not _DNS_1035.match(name):
        yield FieldError(
            "metadata.name",
            f"{name!r} is not a DNS-1035 label (lower case, digits and '-', starts with a "
            "letter, at most 63 characters)",
        )
    namespace = metadata.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_1123.match(namespace)
    ):
        yield FieldError("metadata.namespace", f"{namespace!r} is not a DNS-1123 label")
    generation = metadata.get("generation")
    if generation is not None and not isinstance(generation, int):
        yield FieldError("metadata.generation", f"{generation!r} is not an integer")
    yield from _string_map_errors("metadata.labels", metadata.get("labels"), labels=True)
    yield from _string_map_errors("metadata.annotations", metadata.get("annotations"))


def _string_map_errors(path: str, value: object, *, labels: bool = False) -> Iterator[FieldError]:
    """Labels or annotations, as the API server checks them."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        yield FieldError(path, "must be a mapping of strings to strings")
        return
    total = 0
    for key, item in value.items():
        field = f"{path}[{key!r}]" if isinstance(key, str) else path
        if not isinstance(key, str):
            yield FieldError(path, f"key {_short(key)} is not a string")
            continue
        yield from (FieldError(field, problem) for problem in _qualified_name_problems(key))
        if not isinstance(item, str):
            yield FieldError(field, f"value {_short(item)} is not a string")
            continue
        total += len(key.encode()) + len(item.encode())
        if labels and (len(item) > _NAME_MAX or (item and not _QUALIFIED_NAME.match(item))):
            yield FieldError(
                field,
                f"value {_short(item)} must be at most {_NAME_MAX} characters, empty or "
                "alphanumeric with '-', '_' or '.' inside",
            )
    if not labels and total > _ANNOTATIONS_MAX_BYTES:
        yield FieldError(path, f"{total} bytes in total; at most {_ANNOTATIONS_MAX_BYTES}")


def _qualified_name_problems(key: str) -> Iterator[str]:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > _PREFIX_MAX or not _DNS_1123_SUBDOMAIN.match(prefix)):
        yield (
            f"key prefix {_short(prefix)} must be a DNS subdomain (lower case, digits, '-' "
            f"and '.', at most {_PREFIX_MAX} characters)"
        )
    if not name or len(name) > _NAME_MAX or not _QUALIFIED_NAME.match(name):
        yield (
            f"key name {_short(name)} must be 1 to {_NAME_MAX} characters, alphanumeric with "
            "'-', '_' or '.' inside"
        )


def _short(value: object, limit: int = 40) -> str:
    """``repr`` cut short: an error quotes what it refuses, not all of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _duplicates(path: str, names: Sequence[str]) -> Iterator[FieldError]:
    # Each repeat is named by its index, as the API server names it ("Duplicate value").
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            yield FieldError(
                f"{path}[{i}]",
                f"duplicate of {path}[{first[name]}] ({name!r}); names must be unique",
            )
        else:
            first[name] = i


def _version_errors(path: str, version: Doc) -> Iterator[FieldError]:
    env = version.get("env", [])
    yield from _duplicates(f"{path}.env", [e["name"] for e in env])
    for i, var in enumerate(env):
        yield from _env_errors(f"{path}.env[{i}]", var)


def _env_errors(path: str, env: Doc) -> Iterator[FieldError]:
    value_from = env.get("valueFrom")
    if ("value" in env) == (value_from is not None):
        yield FieldError(path, "set exactly one of value and valueFrom")
    if value_from is not None and len(value_from) != 1:
        yield FieldError(f"{path}.valueFrom", "set exactly one of secretKeyRef and configMapKeyRef")


def _method_errors(
    path: str, name: str, services: Sequence[str], catalog: MethodCatalog | None
) -> Iterator[FieldError]:
    service, _, method = name.partition("/")
    if service not in services:
        yield FieldError(path, f"service {service} is not one of spec.grpc.services")
    elif catalog is not None and catalog.knows(service) and catalog.lookup(service, method) is None:
        known = ", ".join(m.name for m in catalog.methods(service))
        yield FieldError(path, f"{service} has no method {method} (it has: {known})")


def _authorization_errors(
    authorization: Doc, services: Sequence[str], catalog: MethodCatalog | None
) -> Iterator[FieldError]:
    for i, rule in enumerate(authorization["rules"]):
        path = f"spec.authorization.rules[{i}]"
        callers = rule["from"]
        if not (callers.get("services") or callers.get("namespaces") or callers.get("ingress")):
            yield FieldError(f"{path}.from", "name services, namespaces or the ingress")
        yield from _duplicates(f"{path}.from.services", callers.get("services", []))
        yield from _duplicates(f"{path}.from.namespaces", callers.get("namespaces", []))
        yield from _duplicates(f"{path}.to", [t["service"] for t in rule.get("to", [])])
        for j, allowed in enumerate(rule.get("to", [])):
            service = allowed["service"]
            if service not in services:
                yield FieldError(
                    f"{path}.to[{j}].service", f"{service} is not one of spec.grpc.services"
                )
                continue
            yield from _duplicates(f"{path}.to[{j}].methods", allowed.get("methods", []))
            for k, method in enumerate(allowed.get("methods", [])):
                yield from _method_errors(
                    f"{path}.to[{j}].methods[{k}]", f"{service}/{method}", services, catalog
                )


# --- conversion (documents are valid by now) ---------------------------------------------------


def _build(body: Doc) -> MeshService:
    metadata: Doc = body["metadata"]
    spec: Doc = body["spec"]
    workload = spec.get("workload")
    if "versions" in spec:
        versions = tuple(_version(v) for v in spec["versions"])
    else:
        implicit = (workload or {}).get("version", DEFAULT_VERSION)
        versions = (VersionTarget(implicit, 100),)
    return MeshService(
        name=metadata["name"],
        namespace=metadata.get("namespace") or "default",
        generation=metadata.get("generation"),
        grpc=GrpcSpec(spec["grpc"]["port"], tuple(spec["grpc"]["services"])),
        versions=versions,
        replicas=spec.get("replicas", 1),
        expose=spec.get("expose", False),
        mtls=MtlsMode(spec.get("mtls", {}).get("mode", MtlsMode.STRICT)),
        proxyless=spec.get("proxyless", False),
        workload=None if workload is None else _workload(workload),
        backends=tuple(_backend(b) for b in spec.get("backends", [])),
        traffic_policy=_traffic_policy(spec.get("trafficPolicy", {})),
        methods=tuple(_method(m) for m in spec.get("methods", [])),
        config=tuple(sorted(spec.get("config", {}).items())),
        authorization=_authorization(spec["authorization"]) if "authorization" in spec else None,
    )


def _authorization(doc: Doc) -> Authorization:
    return Authorization(
        rules=tuple(
            AuthorizationRule(
                callers=Callers(
                    services=tuple(rule["from"].get("services", [])),
                    namespaces=tuple(rule["from"].get("namespaces", [])),
                    ingress=rule["from"].get("ingress", False),
                ),
                to=tuple(
                    AllowedCalls(t["service"], tuple(t.get("methods", [])))
                    for t in rule.get("to", [])
                ),
            )
            for rule in doc["rules"]
        )
    )


def _duration(doc: Doc, key: str) -> timedelta | None:
    return parse_duration(doc[key]) if key in doc else None


def _duration_or(doc: Doc, key: str, default: timedelta) -> timedelta:
    # Not `_duration(...) or default`: "0s" is falsy and means something (no deadline).
    value = _duration(doc, key)
    return default if value is None else value


def _workload(doc: Doc) -> Workload:
    resources = doc.get("resources", {})
    return Workload(
        image=doc["image"],
        command=tuple(doc.get("command", [])),
        args=tuple(doc.get("args", [])),
        env=tuple(_env(e) for e in doc.get("env", [])),
        resources=Resources(
            requests=_resource_list(resources.get("requests", {})),
            limits=_resource_list(resources.get("limits", {})),
        ),
        workers=doc.get("workers"),
    )


def _version(doc: Doc) -> VersionTarget:
    command, args = doc.get("command"), doc.get("args")
    return VersionTarget(
        name=doc["name"],
        weight=doc["weight"],
        image=doc.get("image"),
        replicas=doc.get("replicas"),
        command=None if command is None else tuple(command),
        args=None if args is None else tuple(args),
        env=tuple(_env(e) for e in doc.get("env", [])),
    )


def _resource_list(doc: Doc) -> ResourceList:
    # Quantities may be written as integers (cpu: 1); Kubernetes stores them as strings.
    cpu, memory = doc.get("cpu"), doc.get("memory")
    return ResourceList(
        cpu=None if cpu is None else str(cpu), memory=None if memory is None else str(memory)
    )


def _env(doc: Doc) -> EnvVar:
    value_from = doc.get("valueFrom", {})
    secret, config_map = value_from.get("secretKeyRef"), value_from.get("configMapKeyRef")
    return EnvVar(
        name=doc["name"],
        value=doc.get("value"),
        secret_key_ref=None if secret is None else KeyRef(secret["name"], secret["key"]),
        config_map_key_ref=None
        if config_map is None
        else KeyRef(config_map["name"], config_map["key"]),
    )


def _backend(doc: Doc) -> Backend:
    external = doc.get("external")
    return Backend(
        name=doc["name"],
        external=None
        if external is None
        else ExternalHost(external["host"], external["port"], external.get("tls", False)),
    )


def _traffic_policy(doc: Doc) -> TrafficPolicy:
    default = TrafficPolicy()
    outlier = doc.get("outlierDetection")
    return TrafficPolicy(
        timeout=_duration_or(doc, "timeout", default.timeout),
        connect_timeout=_duration_or(doc, "connectTimeout", default.connect_timeout),
        load_balancer=LoadBalancer(doc.get("loadBalancer", default.load_balancer)),
        retries=_retry_policy(doc.get("retries", {})),
        outlier_detection=None if outlier is None else _outlier_detection(outlier),
        circuit_breaker=CircuitBreaker(
            max_connections=doc.get("circuitBreaker", {}).get("maxConnections"),
            max_pending_requests=doc.get("circuitBreaker", {}).get("maxPendingRequests"),
            max_requests=doc.get("circuitBreaker", {}).get("maxRequests"),
            max_retries=doc.get("circuitBreaker", {}).get("maxRetries"),
        ),
        fault=_fault(doc["fault"]) if "fault" in doc else None,
    )


def _fault(doc: Doc) -> FaultInjection:
    delay, abort = doc.get("delay"), doc.get("abort")
    return FaultInjection(
        delay=None
        if delay is None
        else FaultDelay(parse_duration(delay["fixedDelay"]), float(delay["percentage"])),
        abort=None
        if abort is None
        else FaultAbort(GrpcCode(abort["grpcStatus"]), float(abort["percentage"])),
    )


def _retry_policy(doc: Doc) -> RetryPolicy:
    default = RetryPolicy()
    budget = doc.get("budget", {})
    return RetryPolicy(
        attempts=doc.get("attempts", default.attempts),
        per_try_timeout=_duration(doc, "perTryTimeout"),
        retry_on=_retry_on(doc["retryOn"]) if "retryOn" in doc else default.retry_on,
        budget=RetryBudget(
            percent=float(budget.get("percent", default.budget.percent)),
            min_concurrency=budget.get("minConcurrency", default.budget.min_concurrency),
        ),
    )


def _retry_on(codes: Iterable[str]) -> tuple[RetryOn, ...]:
    # Declaration order of the enum, so equal sets give equal values (and equal Envoy config).
    chosen = set(codes)
    return tuple(code for code in RetryOn if code.value in chosen)


def _outlier_detection(doc: Doc) -> OutlierDetection:
    default = OutlierDetection()
    return OutlierDetection(
        consecutive_5xx=doc.get("consecutive5xx"),
        consecutive_gateway_failure=doc.get("consecutiveGatewayFailure"),
        interval=_duration_or(doc, "interval", default.interval),
        base_ejection_time=_duration_or(doc, "baseEjectionTime", default.base_ejection_time),
        max_ejection_percent=doc.get("maxEjectionPercent", default.max_ejection_percent),
    )


def _method(doc: Doc) -> MethodPolicy:
    retries = doc.get("retries")
    return MethodPolicy(
        name=doc["name"],
        timeout=_duration(doc, "timeout"),
        idempotent=doc.get("idempotent"),
        retries=None
        if retries is None
        else RetryOverride(
            attempts=retries.get("attempts"),
            per_try_timeout=_duration(retries, "perTryTimeout"),
            retry_on=_retry_on(retries["retryOn"]) if "retryOn" in retries else None,
        ),
        fault=_fault(doc["fault"]) if "fault" in doc else None,
    )
