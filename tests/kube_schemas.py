"""Validating rendered Kubernetes objects as an API server would.

Built-in kinds: kubernetes-validate, strict (an unknown field fails), for the oldest version we
support and the newest it bundles. Custom kinds: the openAPIV3Schema of their CRD, ours
(manifests/crds) or published (../shared/contracts), closed the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from jsonschema import Draft4Validator

from grpcmesh_control.mesh.model.schema import strict_schema
from tests.shared import REPO, SHARED

# The published schemas of what we plug into, next to the repository (CI has them too).
CONTRACTS = SHARED / "contracts"
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
_IMPLICIT = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object"},
}


def _crd_files() -> list[Path]:
    return [
        *sorted((REPO / "manifests" / "crds").glob("*.yaml")),
        *sorted((CONTRACTS / "prometheus-operator").glob("*.yaml")),
        *sorted((CONTRACTS / "appmesh").glob("*.yaml")),
    ]


@cache
def crd_validators() -> dict[tuple[str, str], Draft4Validator]:
    """(apiVersion, kind) -> a closed validator for every CRD we know."""
    validators: dict[tuple[str, str], Draft4Validator] = {}
    for path in _crd_files():
        assert path.is_file(), f"CRD not found: {path}"
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                # The API server always accepts these, whether the schema lists them or not.
                schema["properties"] = {**_IMPLICIT, **schema.get("properties", {})}
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                validators[key] = Draft4Validator(strict_schema(schema))
    return validators


def is_custom(obj: Mapping[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in crd_validators()


def crd_errors(obj: Mapping[str, Any]) -> list[str]:
    validator = crd_validators()[(obj["apiVersion"], obj["kind"])]
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def validate_builtin(obj: Mapping[str, Any], versions: Iterable[str] = K8S_VERSIONS) -> None:
    """kubernetes-validate, strict (unknown fields fail), for each Kubernetes version."""
    for version in versions:
        kubernetes_validate.validate(dict(obj), version, strict=True)


def schema_nodes(
    schema: Mapping[str, Any], path: str = ""
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every node of an openAPIV3Schema with its field path (``[]`` marks list items, ``{}``
    map values)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), Mapping):
        yield from schema_nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from schema_nodes(schema["additionalProperties"], f"{path}{{}}")
