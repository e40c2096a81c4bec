"""Rendering the chart once per values cell, and the schema checks the chart tests share.

The chart is rendered with helm-python-sdk (the real Helm engine, no cluster). ``render`` is
cached per cell, so every test of a process sees one render of each. Built-in kinds are checked
with kubernetes-validate (strict), custom kinds against their CRD's openAPIV3Schema: ours
(charts/grpcmesh/crds) and the published ones in ../shared/contracts.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "grpcmesh"
RELEASE, NAMESPACE = "grpcmesh", "grpcmesh-system"  # the names manifests/ are written for

Obj = dict[str, Any]


@dataclass(frozen=True)
class Cell:
    """One point of the values matrix (referenceServices off, as in the lint matrix)."""

    provider: str
    monitoring: bool
    cert_manager: bool
    reference_services: bool = False
    scrape: str = "podMonitors"
    """With monitoring on: ``podMonitors`` or ``serviceMonitors`` (the chart refuses both)."""

    @property
    def id(self) -> str:
        return "-".join(
            [
                self.provider,
                f"monitoring:{self.scrape}" if self.monitoring else "nomonitoring",
                "certmanager" if self.cert_manager else "selfcert",
                *(["refsvc"] if self.reference_services else []),
            ]
        )

    def values(self) -> Obj:
        on = self.monitoring
        return {
            "provider": self.provider,
            "monitoring": {
                "podMonitors": {"enabled": on and self.scrape == "podMonitors"},
                "serviceMonitors": {"enabled": on and self.scrape == "serviceMonitors"},
                "prometheusRules": {"enabled": on},
                "dashboards": {"enabled": on},
            },
            "webhooks": {"certManager": {"enabled": self.cert_manager}},
            "referenceServices": {"enabled": self.reference_services},
        }


MATRIX = tuple(
    Cell(provider, monitoring, cert_manager)
    for provider in ("native", "appmesh")
    for monitoring in (True, False)
    for cert_manager in (True, False)
) + tuple(
    Cell(provider, True, False, scrape="serviceMonitors") for provider in ("native", "appmesh")
)
DEFAULTS: Obj = {}
# Every cell plus the defaults (which include the reference services).
VALUE_SETS: tuple[tuple[str, Obj], ...] = (
    ("defaults", DEFAULTS),
    *((cell.id, cell.values()) for cell in MATRIX),
)


@cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


@cache
def _render(values_json: str, release: str, namespace: str) -> tuple[tuple[str, str], ...]:
    rendered = chart().render(json.loads(values_json), name=release, namespace=namespace)
    return tuple(sorted(rendered.items()))


def render_files(
    values: Mapping[str, Any], *, release: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """{template path: text}, rendered once per distinct (values, release, namespace)."""
    return dict(_render(json.dumps(values, sort_keys=True), release, namespace))


def render(
    values: Mapping[str, Any], *, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[Obj]:
    """Every object the chart renders (a fresh copy: callers may edit it)."""
    objects: list[Obj] = []
    for path, text in render_files(values, release=release, namespace=namespace).items():
        if path.endswith("NOTES.txt"):
            continue
        objects += [d for d in yaml.safe_load_all(text) if d]
    return copy.deepcopy(objects)


def find(objects: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = find(objects, kind, name)
    return found


def load_yaml(path: Path) -> list[Obj]:
    with path.open() as stream:
        return [d for d in yaml.safe_load_all(stream) if d]


# --- custom resources ------------------------------------------------------------------------

# Custom kinds without a contract schema here, each checked by hand instead (cert_manager_errors).
# cert-manager's CRDs are not in ../shared/contracts; the chart only writes two small objects.
ALLOWED_UNSCHEMED = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
}


def is_builtin(obj: Mapping[str, Any]) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def cert_manager_errors(obj: Mapping[str, Any]) -> list[str]:
    """The fields cert-manager needs, checked by hand (no schema of its CRDs is available)."""
    errors = []
    spec = obj.get("spec") or {}
    if obj["apiVersion"] != "cert-manager.io/v1":
        errors.append(f"apiVersion {obj['apiVersion']!r}")
    if not obj.get("metadata", {}).get("namespace"):
        errors.append("metadata.namespace missing")
    if obj["kind"] == "Issuer":
        issuer_types = {"selfSigned", "ca", "acme", "vault", "venafi"}
        if len(issuer_types & set(spec)) != 1:
            errors.append("spec: exactly one issuer type")
    elif obj["kind"] == "Certificate":
        if not isinstance(spec.get("secretName"), str) or not spec["secretName"]:
            errors.append("spec.secretName missing")
        names = spec.get("dnsNames")
        if not names or not all(isinstance(n, str) and n for n in names):
            errors.append("spec.dnsNames missing")
        ref = spec.get("issuerRef") or {}
        if not ref.get("name"):
            errors.append("spec.issuerRef.name missing")
        if ref.get("kind", "Issuer") not in {"Issuer", "ClusterIssuer"}:
            errors.append(f"spec.issuerRef.kind {ref.get('kind')!r}")
    else:
        errors.append(f"unexpected kind {obj['kind']}")
    return errors


# --- pods ------------------------------------------------------------------------------------


def pod_templates(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """(kind/name, pod template) of every workload object."""
    for obj in objects:
        template = (obj.get("spec") or {}).get("template")
        if isinstance(template, dict) and "spec" in template:
            yield f"{obj['kind']}/{obj['metadata']['name']}", template


def containers(pod_spec: Mapping[str, Any]) -> Iterator[Obj]:
    yield from pod_spec.get("initContainers") or []
    yield from pod_spec.get("containers") or []


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}
