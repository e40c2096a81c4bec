"""Where the mesh's model comes from. Local mode: YAML files and an endpoints file (``files``).
Pure parsing and validation, plus the few functions that read the files."""

from grpcmesh_control.local.sources.files import (
    ENDPOINTS_FILE,
    RESOURCES_DIR,
    ApplyPlan,
    EndpointMap,
    ResourceSet,
    SourcedService,
    check_resource_set,
    content_digest,
    parse_endpoints,
    parse_resource_files,
    plan_apply,
    plan_delete,
    read_endpoints,
    read_resource_files,
)

__all__ = [
    "ENDPOINTS_FILE",
    "RESOURCES_DIR",
    "ApplyPlan",
    "EndpointMap",
    "ResourceSet",
    "SourcedService",
    "check_resource_set",
    "content_digest",
    "parse_endpoints",
    "parse_resource_files",
    "plan_apply",
    "plan_delete",
    "read_endpoints",
    "read_resource_files",
]
