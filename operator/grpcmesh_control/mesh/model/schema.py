"""The MeshService schema, loaded from the CRD file (the one source of truth).

A CRD may not say ``additionalProperties: false`` next to ``properties`` (the API server
rejects it); the API server refuses unknown fields through strict field validation instead.
``strict_schema`` adds ``additionalProperties: false`` to every object that lists its
properties, so the local validator refuses the same documents ``kubectl apply`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import yaml

__all__ = [
    "API_VERSION",
    "CRD_PATH",
    "GROUP",
    "KIND",
    "VERSION",
    "load_crd",
    "openapi_schema",
    "strict_schema",
]

GROUP = "grpcmesh.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MeshService"

# Package data: a copy of manifests/crds/meshservices.grpcmesh.io.yaml (a test keeps them
# byte-identical), so an installed wheel and the images parse without a checkout.
CRD_PATH: Traversable = files("grpcmesh_control.mesh.model") / "meshservices.grpcmesh.io.yaml"


def load_crd(path: Traversable = CRD_PATH) -> dict[str, Any]:
    """The CRD document at ``path``."""
    with path.open(encoding="utf-8") as stream:
        doc = yaml.safe_load(stream)
    if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path}: not a CustomResourceDefinition")
    return doc


def openapi_schema(crd: Mapping[str, Any], version: str = VERSION) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` in ``crd``, as written."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` that refuses unknown fields, like strict field validation.

    The root's ``metadata`` stays open: a CRD may only constrain ``metadata.name`` (and
    ``generateName``); the rest is ObjectMeta, which the API server validates itself.
    """
    out = _closed(schema)
    metadata = schema.get("properties", {}).get("metadata")
    if isinstance(metadata, Mapping):
        out["properties"]["metadata"] = {**_closed(metadata)}
        out["properties"]["metadata"].pop("additionalProperties", None)
    return out


def _closed(schema: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _closed(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = _closed(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_closed(sub) for sub in value]
        else:
            out[key] = value
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields", False)
    ):
        out["additionalProperties"] = False
    return out


@cache
def default_strict_schema() -> Mapping[str, Any]:
    """The strict schema of the CRD at ``CRD_PATH``; read once per process."""
    return strict_schema(openapi_schema(load_crd()))
