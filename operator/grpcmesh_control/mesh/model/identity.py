"""Workload identity: the SPIFFE ID each MeshService's workload runs as, in both modes.

``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``: the form Istio and Linkerd use,
so a sidecar's certificate names the same thing whether the mesh runs in a cluster (the
ServiceAccount the operator renders per MeshService) or locally (namespace ``default``, the
service's name as its account). The certificate authority (``mesh.ca``) puts it in the
workload certificate's URI SAN; the sidecars will match it against the MeshService they meant
to call; authorization rules will name it. One function computes it: ``workload_identity``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "INGRESS_SERVICE_ACCOUNT",
    "LOCAL_NAMESPACE",
    "SpiffeId",
    "ingress_identity",
    "namespace_identities",
    "service_account_name",
    "validate_trust_domain",
    "workload_identity",
]

DEFAULT_TRUST_DOMAIN = "cluster.local"
"""The trust domain when none is configured: Kubernetes' default cluster domain, as Istio's."""

LOCAL_NAMESPACE = "default"
"""The namespace local mode's services live in (``MeshService.namespace`` defaults to it)."""

_SCHEME = "spiffe://"
# SPIFFE ID spec, section 2.1 and 2.2: lowercase letters, digits, '.', '-', '_' in the trust
# domain; letters, digits, '.', '-', '_' in each path segment (never '.' or '..').
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def validate_trust_domain(trust_domain: str, field: str = "trustDomain") -> str:
    """``trust_domain`` when it is a valid SPIFFE trust domain; ``ValueError`` naming ``field``
    otherwise (a setting, so the process refuses to start)."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain) or trust_domain.strip(".") != trust_domain:
        raise ValueError(
            f"{field}: {trust_domain!r} is not a SPIFFE trust domain (lowercase letters, "
            "digits, '.', '-' and '_'; at most 255 characters)"
        )
    return trust_domain


@dataclass(frozen=True, order=True)
class SpiffeId:
    """A workload's identity: the trust domain, its namespace and its service account."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        for field, segment in (
            ("namespace", self.namespace),
            ("serviceAccount", self.service_account),
        ):
            if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
                raise ValueError(f"{field}: {segment!r} is not a SPIFFE path segment")

    @property
    def uri(self) -> str:
        """``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``."""
        return f"{_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """The identity a URI SAN names; ``ValueError`` for any other form (a foreign path
        shape, a query, a port, user info, a trailing slash)."""
        if not uri.startswith(_SCHEME):
            raise ValueError(f"{uri!r} is not a spiffe:// URI")
        trust_domain, _, path = uri[len(_SCHEME) :].partition("/")
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise ValueError(f"{uri!r} is not of the form spiffe://<td>/ns/<namespace>/sa/<sa>")
        try:
            return cls(trust_domain, parts[1], parts[3])
        except ValueError as exc:
            raise ValueError(f"{uri!r}: {exc}") from exc


def service_account_name(service: str) -> str:
    """The ServiceAccount a MeshService's pods run under: its own, named like the service
    (a MeshService name is a DNS label, so it is a valid ServiceAccount name as is)."""
    return service


def workload_identity(
    service: str, namespace: str = LOCAL_NAMESPACE, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> SpiffeId:
    """The identity of MeshService ``namespace/service``'s workload, in either mode: a cluster
    passes the MeshService's namespace; local mode keeps the default namespace."""
    return SpiffeId(trust_domain, namespace, service_account_name(service))


INGRESS_SERVICE_ACCOUNT = "grpcmesh-ingress"
"""The ServiceAccount the ingress gateway runs under: what authorization rules name as
``from.ingress``."""


def ingress_identity(
    namespace: str = LOCAL_NAMESPACE, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> SpiffeId:
    """The ingress gateway's identity, in the namespace it runs in (local mode: the default)."""
    return SpiffeId(trust_domain, namespace, INGRESS_SERVICE_ACCOUNT)


def namespace_identities(namespace: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """A regular expression (RE2, full match) for every workload identity of ``namespace``."""
    SpiffeId(trust_domain, namespace, "x")  # validates both parts
    return f"{re.escape(_SCHEME + trust_domain)}/ns/{re.escape(namespace)}/sa/[^/]+"
