"""Checks shared by the k8s tests: Kubernetes schemas (built-in kinds), CRD schemas (custom
kinds), object names, and applying an admission JSONPatch."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jsonpatch

from tests.kube_schemas import K8S_VERSIONS, crd_errors, is_custom, validate_builtin

__all__ = [
    "K8S_VERSIONS",
    "apply_review_patch",
    "crd_errors",
    "is_custom",
    "name_problems",
    "validate_builtin",
    "validate_object",
]

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


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
