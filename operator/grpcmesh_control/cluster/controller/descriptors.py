"""The method catalog in a cluster: ConfigMaps of protobuf descriptor sets.

The operator does not import any service's generated code (it runs from its own image). Each
team publishes its protos' ``FileDescriptorSet`` (``buf build -o api.binpb``, or ``protoc
--descriptor_set_out``) in a ConfigMap labelled ``grpcmesh.io/descriptor-set``, in any
namespace, one or more ``binaryData`` keys each holding one set. The catalog is every set
merged, ConfigMaps in (namespace, name) order, keys in name order (a later one wins for a
service defined twice). The chart ships the reference services' set this way.

Without a set for a service, its methods are unknown: nothing is retried (retries need the
proto's ``idempotency_level``) and ``spec.methods`` names are not checked against the proto.
The files themselves are kept too (``protos_of_config_maps``): server reflection at the ingress
describes the exposed services from them (``host.reflection``).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from grpcmesh_control.mesh.catalogs import ProtoSet
from grpcmesh_control.mesh.model import MethodCatalog

__all__ = ["DESCRIPTOR_SET_LABEL", "catalog_of_config_maps", "protos_of_config_maps"]

log = logging.getLogger(__name__)

DESCRIPTOR_SET_LABEL = "grpcmesh.io/descriptor-set"


def catalog_of_config_maps(
    config_maps: Iterable[Mapping[str, Any]],
) -> tuple[MethodCatalog, tuple[str, ...]]:
    """The merged catalog of ``config_maps``, and a problem per value that is not a
    base64-encoded ``FileDescriptorSet`` (skipped, so one bad ConfigMap spoils nothing)."""
    protos, problems = protos_of_config_maps(config_maps)
    return protos.catalog, problems


def protos_of_config_maps(
    config_maps: Iterable[Mapping[str, Any]],
) -> tuple[ProtoSet, tuple[str, ...]]:
    """The proto files of ``config_maps`` merged in order (a later copy of a file wins), and
    the problems ``catalog_of_config_maps`` reports."""

    def order(body: Mapping[str, Any]) -> tuple[str, str]:
        meta = body.get("metadata") or {}
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    protos = ProtoSet()
    problems: list[str] = []
    for body in sorted(config_maps, key=order):
        namespace, name = order(body)
        for key, encoded in sorted((body.get("binaryData") or {}).items()):
            try:
                found = ProtoSet.parse(base64.b64decode(encoded, validate=True))
            except (ValueError, binascii.Error, TypeError) as exc:
                problems.append(f"ConfigMap {namespace}/{name} binaryData.{key}: {exc}")
                continue
            protos = protos.merged(found)
    for problem in problems:
        log.warning("ignoring a descriptor set: %s", problem)
    return protos, tuple(problems)
