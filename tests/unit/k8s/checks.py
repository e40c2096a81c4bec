"""Checks shared by the k8s tests: Kubernetes schemas (built-in kinds), CRD schemas (custom
kinds), object names, and applying an admission JSONPatch."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import yaml
from jsonschema import Draft4Validator

from grpcmesh_control.model.schema import strict_schema

# The published schemas of what we plug into, next to the repository (../shared/contracts).
CONTRACTS = Path(__file__).resolve().parents[4] / "shared" / "contracts"
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
_CRD_FILES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator/"
    "monitoring.coreos.com_servicemonitors.yaml",
    ("appmesh.k8s.aws/v1beta2", "Mesh"): "appmesh/appmesh.k8s.aws_meshes.yaml",
    ("appmesh.k8s.aws/v1beta2", "VirtualNode"): "appmesh/appmesh.k8s.aws_virtualnodes.yaml",
    ("appmesh.k8s.aws/v1beta2", "VirtualRouter"): "appmesh/appmesh.k8s.aws_virtualrouters.yaml",
    ("appmesh.k8s.aws/v1beta2", "VirtualService"): "appmesh/appmesh.k8s.aws_virtualservices.yaml",
}
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_custom(obj: Mapping[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in _CRD_FILES


@cache
def _crd_validator(api_version: str, kind: str) -> Draft4Validator:
    with (CONTRACTS / _CRD_FILES[(api_version, kind)]).open() as stream:
        crd = yaml.safe_load(stream)
    version = api_version.rpartition("/")[2]
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    # Strict, like the API server's field validation: an unknown (misspelt) field fails.
    return Draft4Validator(strict_schema(entry["schema"]["openAPIV3Schema"]))


def crd_errors(obj: Mapping[str, Any]) -> list[str]:
    validator = _crd_validator(obj["apiVersion"], obj["kind"])
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


def validate_builtin(obj: Mapping[str, Any], versions: Iterable[str] = K8S_VERSIONS) -> None:
    """kubernetes-validate, strict (unknown fields fail), for each Kubernetes version."""
    for version in versions:
        kubernetes_validate.validate(dict(obj), version, strict=True)


def validate_object(obj: Mapping[str, Any], versions: Iterable[str] = K8S_VERSIONS) -> None:
    """Any rendered object: its schema, then the name rules schemas do not encode."""
    if is_custom(obj):
        errors = crd_errors(obj)
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: {errors}"
    else:
        validate_builtin(obj, versions)
    name_errors = list(name_problems(obj))
    assert not name_errors, name_errors


def name_problems(obj: Mapping[str, Any]) -> Iterable[str]:
    metadata = obj["metadata"]
    name = metadata["name"]
    where = f"{obj['kind']}/{name}"
    if obj["kind"] == "Service":
        if not (_DNS_1035.match(name) and len(name) <= 63):
            yield f"{where}: not a DNS-1035 label"
    elif not (_DNS_1123_SUBDOMAIN.match(name) and len(name) <= 253):
        yield f"{where}: not a DNS-1123 subdomain"
    labels = dict(metadata.get("labels") or {})
    template = (obj.get("spec") or {}).get("template")
    if isinstance(template, Mapping):
        labels |= template["metadata"].get("labels") or {}
        for container in [
            *template["spec"].get("initContainers", []),
            *template["spec"]["containers"],
        ]:
            for port in container.get("ports", []):
                if not (_PORT_NAME.match(port["name"]) and len(port["name"]) <= 15):
                    yield f"{where}: port name {port['name']!r} is not an IANA_SVC_NAME"
    for key, value in labels.items():
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            yield f"{where}: label {key}={value!r} is not a valid label value"


def apply_review_patch(obj: Mapping[str, Any], review: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` after the JSONPatch in an AdmissionReview response (as the API server does)."""
    response = review["response"]
    if "patch" not in response:
        return dict(obj)
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    patched: dict[str, Any] = jsonpatch.apply_patch(dict(obj), ops)
    return patched
