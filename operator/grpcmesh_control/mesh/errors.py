"""The control plane's error vocabulary, in one place.

``MeshError`` is the base of every error the core raises on purpose:

- ``InvalidResource``: a MeshService document fails the CRD schema or a semantic rule. Carries
  one ``FieldError`` per problem; the message names the source and each field path, e.g.
  ``orders.yaml (MeshService default/orders): spec.trafficPolicy.retries.attempts: -1 is less
  than the minimum of 0``. The webhook returns it verbatim, the operator puts it in a condition.
- ``InvalidResourceSet``: a set of resource files (local mode's ``resources/`` directory, or
  it plus the documents of an ``apply``) fails: one ``InvalidResource`` per bad document or
  broken whole-set rule (duplicate names, unknown backends, a gRPC service served twice).
- ``InvalidNodeId``: an Envoy node id (or its metadata) does not follow the naming conventions
  of ``grpcmesh_control.mesh.translate.naming``.
- ``UnknownNode``: a sidecar's service is not (yet) in the registry; the xDS server keeps the
  stream open and answers once it appears.
- ``InconsistentSnapshot``: a snapshot would reference a resource it does not contain. Never
  published: the previous good snapshot stays in place.

Local mode's errors derive from ``MeshError`` too (each also from the builtin it refines), so
the CLI tells "refused or failed" from a bug with one ``except MeshError``: ``PlanError``
(resources local mode cannot run), ``ResourcePathError`` (a ``--resources`` path),
``PortsExhausted``, ``LauncherError`` (no Envoy, a mesh already running), ``StartupError`` (a
process did not start; quotes its log), ``NotConverged`` (proxies did not ACK in time),
``NotFollowed`` (the launcher did not start or stop what an ``apply`` changed in time),
``CredentialError`` (the mesh's credential file missing or not private), ``StateError``
(``state.json`` not ours), ``AdminUnavailable`` (the control plane's admin API unreachable),
``MeshNotRunning``/``MeshNotStopped`` (``grpcmesh down``) and ``TopError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "FieldError",
    "InconsistentSnapshot",
    "InvalidNodeId",
    "InvalidResource",
    "InvalidResourceSet",
    "MeshError",
    "UnknownNode",
]


class MeshError(Exception):
    """Base of every error the control plane core raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field. ``path`` is dotted, with list indexes: ``spec.versions[1]``."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class InvalidResource(MeshError):
    """A resource document is invalid. ``errors`` lists every problem found, sorted by path."""

    def __init__(self, source: str, errors: Iterable[FieldError]) -> None:
        self.source = source
        self.errors = tuple(sorted(set(errors), key=lambda e: (e.path, e.reason)))
        detail = "; ".join(str(e) for e in self.errors) or "invalid"
        super().__init__(f"{source}: {detail}")


class InvalidResourceSet(MeshError):
    """Resource files are invalid as a set. ``problems`` holds every failing document, in file
    order; the message puts one per line."""

    def __init__(self, problems: Iterable[InvalidResource]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid resources")


class InvalidNodeId(MeshError):
    """An Envoy node id or node metadata does not follow the naming conventions."""


class UnknownNode(MeshError):
    """A node belongs to a service the registry does not know (yet)."""


class InconsistentSnapshot(MeshError):
    """A snapshot references resources it does not contain (or names one twice)."""

    def __init__(self, node_id: str, problems: Iterable[str]) -> None:
        self.node_id = node_id
        self.problems = tuple(problems)
        super().__init__(f"inconsistent snapshot for {node_id}: " + "; ".join(self.problems))
