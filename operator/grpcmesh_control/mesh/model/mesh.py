"""The mesh's domain values: a parsed MeshService and the endpoints that serve it.

Frozen dataclasses and string enums, defaults filled in by the parser, so translation never
has to ask "was this set?" except where unset means something (``None`` fields say so).
Defaults are stated once, here, and repeated in the CRD's field descriptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum

__all__ = [
    "AllowedCalls",
    "Authorization",
    "AuthorizationRule",
    "Backend",
    "Callers",
    "CircuitBreaker",
    "Endpoint",
    "EnvVar",
    "ExternalHost",
    "FaultAbort",
    "FaultDelay",
    "FaultInjection",
    "GrpcCode",
    "GrpcSpec",
    "KeyRef",
    "LoadBalancer",
    "MeshService",
    "MethodPolicy",
    "OutlierDetection",
    "ResourceList",
    "Resources",
    "RetryBudget",
    "RetryOn",
    "RetryOverride",
    "RetryPolicy",
    "TrafficPolicy",
    "VersionTarget",
    "Workload",
]

DEFAULT_VERSION = "v1"


class RetryOn(StrEnum):
    """gRPC status codes a retry may be triggered by (the ones Envoy can retry on)."""

    UNAVAILABLE = "UNAVAILABLE"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


class MtlsMode(StrEnum):
    """What a MeshService's inbound side accepts when the mesh speaks mTLS."""

    STRICT = "STRICT"
    """Only callers presenting a mesh certificate (the default)."""
    PERMISSIVE = "PERMISSIVE"
    """Mesh callers and plaintext ones, for a migration."""


class LoadBalancer(StrEnum):
    LEAST_REQUEST = "LEAST_REQUEST"
    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"


@dataclass(frozen=True)
class RetryBudget:
    """Concurrent retries allowed: ``percent`` of active requests, at least ``min_concurrency``.

    Defaults: 50 %, at least 10 (Envoy's own are 20 %, 3; docs/reliability.md, "The default
    retry budget"). The budget must let through the resends of a failover: when one replica of
    a version dies, the calls it gets until EDS drops it (its sidecar answers "not delivered",
    or the connection is refused) are all resent at once, up to 1/N of the active calls for N
    replicas. With Envoy's 3 the chaos suite lost about 3 orders per orders kill at 15 calls/s
    (``upstream_rq_retry_overflow``); 10 is Linkerd's floor (10 retries a second) as a
    concurrency, and 50 % covers a replica of two at any load. It still bounds a full outage's
    retries to half of the active calls (Istio sets no bound at all: max_retries 2^32-1).
    """

    percent: float = 50.0
    min_concurrency: int = 10


@dataclass(frozen=True)
class RetryPolicy:
    """Service-level retries. ``attempts`` counts retries after the first try (Istio's meaning)."""

    attempts: int = 2
    per_try_timeout: timedelta | None = None
    retry_on: tuple[RetryOn, ...] = (RetryOn.UNAVAILABLE,)
    budget: RetryBudget = field(default_factory=RetryBudget)


@dataclass(frozen=True)
class RetryOverride:
    """Per-method retry fields; ``None`` inherits the service's value."""

    attempts: int | None = None
    per_try_timeout: timedelta | None = None
    retry_on: tuple[RetryOn, ...] | None = None


@dataclass(frozen=True)
class OutlierDetection:
    """Passive health checking. Only the detectors that are set (not ``None``) are enforced."""

    consecutive_5xx: int | None = None
    consecutive_gateway_failure: int | None = None
    interval: timedelta = timedelta(seconds=10)
    base_ejection_time: timedelta = timedelta(seconds=30)
    max_ejection_percent: int = 10


@dataclass(frozen=True)
class CircuitBreaker:
    """Per caller sidecar and version cluster; ``None`` keeps Envoy's default (1024, retries 3)."""

    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


class GrpcCode(StrEnum):
    """The gRPC status codes an injected abort may end a call with (every one but OK)."""

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"

    @property
    def number(self) -> int:
        """The number on the wire (``grpc-status``): CANCELLED 1 ... UNAUTHENTICATED 16."""
        return list(GrpcCode).index(self) + 1


@dataclass(frozen=True)
class FaultDelay:
    """Hold ``percentage`` percent of calls for ``fixed_delay`` before sending them on."""

    fixed_delay: timedelta
    percentage: float


@dataclass(frozen=True)
class FaultAbort:
    """End ``percentage`` percent of calls with ``grpc_status`` without sending them on."""

    grpc_status: GrpcCode
    percentage: float


@dataclass(frozen=True)
class FaultInjection:
    """Faults injected into calls to a service or method; both ``None`` injects nothing."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @property
    def active(self) -> bool:
        return self.delay is not None or self.abort is not None


@dataclass(frozen=True)
class TrafficPolicy:
    """How callers call the service. The defaults apply when spec.trafficPolicy omits a field."""

    timeout: timedelta = timedelta(seconds=15)
    connect_timeout: timedelta = timedelta(seconds=1)
    load_balancer: LoadBalancer = LoadBalancer.LEAST_REQUEST
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    outlier_detection: OutlierDetection | None = None
    circuit_breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    fault: FaultInjection | None = None


@dataclass(frozen=True)
class MethodPolicy:
    """Overrides for one method; ``None`` fields inherit the service's traffic policy."""

    name: str  # package.Service/Method
    timeout: timedelta | None = None
    idempotent: bool | None = None
    retries: RetryOverride | None = None
    fault: FaultInjection | None = None
    """Replaces the service's ``traffic_policy.fault`` for this method when set."""

    @property
    def service(self) -> str:
        return self.name.partition("/")[0]

    @property
    def method(self) -> str:
        return self.name.partition("/")[2]


@dataclass(frozen=True)
class VersionTarget:
    """A version of the workload and the percentage of calls it receives.

    ``image``, ``command`` and ``args`` replace the workload's when set (``None``); ``env`` is
    laid over the workload's, by name. ``MeshService.workload_of`` applies them.
    """

    name: str
    weight: int
    image: str | None = None
    replicas: int | None = None
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: tuple[EnvVar, ...] = ()


@dataclass(frozen=True)
class ExternalHost:
    host: str
    port: int
    tls: bool = False


@dataclass(frozen=True)
class Backend:
    """A service this one calls: a MeshService by name, or an external host."""

    name: str
    external: ExternalHost | None = None


@dataclass(frozen=True)
class KeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class EnvVar:
    """Exactly one of ``value``, ``secret_key_ref``, ``config_map_key_ref`` is set."""

    name: str
    value: str | None = None
    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None


@dataclass(frozen=True)
class ResourceList:
    cpu: str | None = None
    memory: str | None = None


@dataclass(frozen=True)
class Resources:
    requests: ResourceList = field(default_factory=ResourceList)
    limits: ResourceList = field(default_factory=ResourceList)


@dataclass(frozen=True)
class Workload:
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    resources: Resources = field(default_factory=Resources)
    workers: int | None = None
    """Processes per replica on one port (the kit's ``workers``); ``None`` leaves the kit's
    default (1)."""


@dataclass(frozen=True)
class GrpcSpec:
    port: int
    services: tuple[str, ...]


@dataclass(frozen=True)
class Callers:
    """Who a rule allows: MeshServices (``name`` in the callee's namespace, or
    ``namespace/name``), every workload of some namespaces, and/or the ingress gateway."""

    services: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    ingress: bool = False


@dataclass(frozen=True)
class AllowedCalls:
    """Methods of one of the callee's gRPC services; no ``methods`` means all of them."""

    service: str
    methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthorizationRule:
    """``callers`` may call ``to``; an empty ``to`` is every method of the callee."""

    callers: Callers
    to: tuple[AllowedCalls, ...] = ()


@dataclass(frozen=True)
class Authorization:
    """Deny by default: a call is allowed when any rule allows it (no rules: none is)."""

    rules: tuple[AuthorizationRule, ...] = ()


@dataclass(frozen=True)
class MeshService:
    """A parsed, validated MeshService.

    ``versions`` is never empty: without spec.versions it holds the single implicit version
    (spec.workload.version, default v1) at weight 100. ``config`` is sorted by key.
    """

    name: str
    namespace: str
    grpc: GrpcSpec
    versions: tuple[VersionTarget, ...] = (VersionTarget(DEFAULT_VERSION, 100),)
    replicas: int = 1
    expose: bool = False
    """Routed at the ingress gateway; off by default, so nothing is public by accident."""
    mtls: MtlsMode = MtlsMode.STRICT
    proxyless: bool = False
    """The app's channels take routes and endpoints from the control plane over xDS (gRPC's
    own client, ``xds:///<backend>``) instead of going through its egress sidecar; its
    inbound sidecar stays (``translate.proxyless``)."""
    workload: Workload | None = None
    backends: tuple[Backend, ...] = ()
    traffic_policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    methods: tuple[MethodPolicy, ...] = ()
    config: tuple[tuple[str, str], ...] = ()
    authorization: Authorization | None = None
    """Who may call it (``spec.authorization``); ``None``: every mesh caller may."""
    generation: int | None = None

    @property
    def key(self) -> str:
        """``namespace/name``, as Kubernetes tools print it."""
        return f"{self.namespace}/{self.name}"

    def method(self, name: str) -> MethodPolicy | None:
        """The override for ``package.Service/Method``, if any."""
        return next((m for m in self.methods if m.name == name), None)

    @property
    def config_map(self) -> Mapping[str, str]:
        return dict(self.config)

    def workload_of(self, version: VersionTarget) -> Workload | None:
        """What ``version`` runs: the workload with the version's image, command, args and env
        applied (``None`` without a workload). Both modes run exactly this."""
        base = self.workload
        if base is None:
            return None
        own = {var.name for var in version.env}
        return replace(
            base,
            image=version.image or base.image,
            command=base.command if version.command is None else version.command,
            args=base.args if version.args is None else version.args,
            env=(*(var for var in base.env if var.name not in own), *version.env),
        )


@dataclass(frozen=True)
class Endpoint:
    """One replica's address as callers reach it (its sidecar's inbound port), by version."""

    address: str
    port: int
    version: str
    ready: bool = True
