"""``spec.authorization`` -> the RBAC filter of a sidecar's inbound listener (a pure function).

Enforced rules (action ALLOW, so deny by default): one policy per rule, its callers matched on
the peer's verified identity (``authenticated``: the URI SAN of the client certificate the
inbound listener required), its methods on the gRPC path. Health checks are always allowed.
A denied call ends with HTTP 403, which Envoy answers a gRPC caller as PERMISSION_DENIED.

Accounting (shadow rules, action DENY, never enforced): one policy per (caller, method) that the
rules do not allow, named ``caller=<who> method=<Service/Method>``, so Envoy's
``envoy_http_rbac_policy_shadow_denied{envoy_rbac_policy_name=...}`` counts denials per caller
and method. ``<who>`` is a caller the rules name (``orders``, ``shop/orders``, ``ns/shop/*``,
``ingress``) or ``other``; methods come from the catalog (``Service/*`` for the rest of a
service whose protos are unknown, ``other`` for a path none of them covers). Envoy turns a
policy name into a label only when it has no dot, so the service is named without its package
(with dots as ``_`` where two services of one MeshService share a name).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2

from grpcmesh_control.mesh.model.catalog import MethodCatalog
from grpcmesh_control.mesh.model.identity import (
    ingress_identity,
    namespace_identities,
    workload_identity,
)
from grpcmesh_control.mesh.model.mesh import Authorization, AuthorizationRule, Callers, MeshService
from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.tls import MeshTls

__all__ = [
    "ALWAYS_ALLOWED",
    "DENIED_STAT_PREFIX",
    "RBAC_FILTER",
    "RULES_STAT_PREFIX",
    "authorization_filter",
    "denial_policy_name",
]

RBAC_FILTER = "envoy.filters.http.rbac"
ALWAYS_ALLOWED = ("grpc.health.v1.Health",)
"""gRPC services any caller may call: health checks answer nothing about the data."""
RULES_STAT_PREFIX = "authz."
DENIED_STAT_PREFIX = "authz_denied."
OTHER = "other"


PLAINTEXT_TRUST = MeshTls()
"""Identities when the mesh runs without a CA: no caller has one, so only health passes."""


def denial_policy_name(caller: str, method: str) -> str:
    """The shadow policy (and so the metric label) counting ``caller``'s denied calls."""
    return f"caller={caller} method={method}"


def authorization_filter(
    svc: MeshService, catalog: MethodCatalog, tls: MeshTls | None = None
) -> hcm_pb2.HttpFilter | None:
    """The RBAC filter for ``svc``'s inbound listener; ``None`` without ``spec.authorization``
    (every caller allowed, as before the field existed). ``tls`` says what identities look
    like (trust domain, the ingress's namespace); without it no caller proves one, and the
    rules, still enforced, let only health checks through."""
    if svc.authorization is None:
        return None
    trust = tls or PLAINTEXT_TRUST
    rbac = rbac_filter_pb2.RBAC(
        rules=_enforced(svc, svc.authorization, trust),
        rules_stat_prefix=RULES_STAT_PREFIX,
        shadow_rules=_accounting(svc, svc.authorization, catalog, trust),
        shadow_rules_stat_prefix=DENIED_STAT_PREFIX,
        track_per_rule_stats=True,
    )
    return hcm_pb2.HttpFilter(name=RBAC_FILTER, typed_config=e.pack(rbac))


# --- who -------------------------------------------------------------------------------------


def _callers(
    callers: Callers, svc: MeshService, trust: MeshTls
) -> list[tuple[str, rbac_pb2.Principal]]:
    """(label, principal) of each caller a rule names, in the order written."""
    named: list[tuple[str, rbac_pb2.Principal]] = []
    for ref in callers.services:
        namespace, _, name = ref.rpartition("/")
        identity = workload_identity(name, namespace or svc.namespace, trust.trust_domain)
        named.append((ref, _peer(string_pb2.StringMatcher(exact=identity.uri))))
    for namespace in callers.namespaces:
        pattern = namespace_identities(namespace, trust.trust_domain)
        regex = regex_pb2.RegexMatcher(regex=pattern)
        named.append((f"ns/{namespace}/*", _peer(string_pb2.StringMatcher(safe_regex=regex))))
    if callers.ingress:
        identity = ingress_identity(trust.ingress_namespace, trust.trust_domain)
        named.append(("ingress", _peer(string_pb2.StringMatcher(exact=identity.uri))))
    return named


def _peer(match: string_pb2.StringMatcher) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=match))


def _any_of(principals: Sequence[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if len(principals) == 1:
        return principals[0]
    return rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=principals))


# --- what ------------------------------------------------------------------------------------


def _path_exact(path: str) -> rbac_pb2.Permission:
    matcher = path_pb2.PathMatcher(path=string_pb2.StringMatcher(exact=path))
    return rbac_pb2.Permission(url_path=matcher)


def _path_prefix(service: str) -> rbac_pb2.Permission:
    matcher = path_pb2.PathMatcher(path=string_pb2.StringMatcher(prefix=f"/{service}/"))
    return rbac_pb2.Permission(url_path=matcher)


def _one_of(permissions: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if len(permissions) == 1:
        return permissions[0]
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=permissions))


def _allowed_paths(rule: AuthorizationRule, svc: MeshService) -> list[rbac_pb2.Permission]:
    if not rule.to:
        return [_path_prefix(service) for service in svc.grpc.services]
    return [
        _path_exact(f"/{allowed.service}/{method}")
        for allowed in rule.to
        for method in allowed.methods
    ] + [_path_prefix(allowed.service) for allowed in rule.to if not allowed.methods]


def _allows(rule: AuthorizationRule, service: str, method: str | None) -> bool:
    """Whether ``rule`` allows ``service``/``method`` (``None``: every method of it)."""
    if not rule.to:
        return True
    for allowed in rule.to:
        if allowed.service == service:
            return not allowed.methods or (method is not None and method in allowed.methods)
    return False


# --- enforced and counted ----------------------------------------------------------------------


def _enforced(svc: MeshService, authorization: Authorization, trust: MeshTls) -> rbac_pb2.RBAC:
    policies = {
        "health": rbac_pb2.Policy(
            permissions=[_path_prefix(s) for s in ALWAYS_ALLOWED],
            principals=[rbac_pb2.Principal(any=True)],
        )
    }
    for i, rule in enumerate(authorization.rules):
        principals = [principal for _, principal in _callers(rule.callers, svc, trust)]
        policies[f"rule-{i}"] = rbac_pb2.Policy(
            permissions=[_one_of(_allowed_paths(rule, svc))], principals=[_any_of(principals)]
        )
    return rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies=policies)


def _targets(
    svc: MeshService, authorization: Authorization, catalog: MethodCatalog
) -> list[tuple[str, rbac_pb2.Permission, str, str | None]]:
    """(name, path permission, gRPC service, method) to count denials of: every method the
    catalog knows or a rule names; for a service whose protos are unknown, also the rest of
    it as one (method ``None``)."""
    out: list[tuple[str, rbac_pb2.Permission, str, str | None]] = []
    short = _short_names(svc.grpc.services)
    for service in svc.grpc.services:
        named = {
            method
            for rule in authorization.rules
            for allowed in rule.to
            if allowed.service == service
            for method in allowed.methods
        }
        methods = sorted({m.name for m in catalog.methods(service)} | named)
        out += [
            (f"{short[service]}/{m}", _path_exact(f"/{service}/{m}"), service, m) for m in methods
        ]
        if not catalog.knows(service):
            rest = _path_prefix(service)
            if methods:
                listed = _one_of([_path_exact(f"/{service}/{m}") for m in methods])
                rest = rbac_pb2.Permission(
                    and_rules=rbac_pb2.Permission.Set(
                        rules=[rest, rbac_pb2.Permission(not_rule=listed)]
                    )
                )
            out.append((f"{short[service]}/*", rest, service, None))
    return out


def _short_names(services: Sequence[str]) -> dict[str, str]:
    """Each gRPC service's name without its package, or in full with ``_`` for dots where two
    share one: a policy name (and so a metric label) must hold no dot."""
    last = [service.rpartition(".")[2] for service in services]
    return {
        service: name if last.count(name) == 1 else service.replace(".", "_")
        for service, name in zip(services, last, strict=True)
    }


def _accounting(
    svc: MeshService, authorization: Authorization, catalog: MethodCatalog, trust: MeshTls
) -> rbac_pb2.RBAC:
    # Each rule's callers once: every target below asks which rules allow it.
    by_rule = [(rule, _callers(rule.callers, svc, trust)) for rule in authorization.rules]
    labelled: dict[str, rbac_pb2.Principal] = {}
    for _, callers in by_rule:
        for label, principal in callers:
            labelled.setdefault(label, principal)
    anyone_named = _any_of(list(labelled.values())) if labelled else None
    other = (
        rbac_pb2.Principal(any=True)
        if anyone_named is None
        else rbac_pb2.Principal(not_id=anyone_named)
    )
    policies: dict[str, rbac_pb2.Policy] = {}
    for name, path, service, method in _targets(svc, authorization, catalog):
        allowing = [
            principal
            for rule, callers in by_rule
            if _allows(rule, service, method)
            for _, principal in callers
        ]
        for label, who in [*labelled.items(), (OTHER, other)]:
            if allowing:
                who = rbac_pb2.Principal(
                    and_ids=rbac_pb2.Principal.Set(
                        ids=[who, rbac_pb2.Principal(not_id=_any_of(allowing))]
                    )
                )
            policies[denial_policy_name(label, name)] = rbac_pb2.Policy(
                permissions=[path], principals=[who]
            )
    # Any other path (a method the protos do not list, another service): nobody may call it.
    covered = [_path_prefix(s) for s in (*svc.grpc.services, *ALWAYS_ALLOWED)]
    elsewhere = rbac_pb2.Permission(not_rule=_one_of(covered))
    for label, who in [*labelled.items(), (OTHER, other)]:
        policies[denial_policy_name(label, OTHER)] = rbac_pb2.Policy(
            permissions=[elsewhere], principals=[who]
        )
    return rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies=policies)
