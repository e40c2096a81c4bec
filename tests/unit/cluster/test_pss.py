"""Pod Security Standards (restricted) and the read-only root rule: every pod the operator
renders complies, and the checker itself catches each kind of violation."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from grpcmesh_control.cluster.objects import (
    OperatorSettings,
    desired_objects,
    read_only_root_violations,
    restricted_violations,
)
from grpcmesh_control.mesh.model import MeshService

from .conftest import NAMESPACE, owner_of


def templates(services: dict[str, MeshService], settings: OperatorSettings) -> list[Any]:
    return [
        o["spec"]["template"]
        for svc in services.values()
        for o in desired_objects(
            svc, namespace=NAMESPACE, owner=owner_of(svc.name), settings=settings
        )
        if o["kind"] == "Deployment"
    ]


def test_rendered_pods_are_restricted(
    services: dict[str, MeshService],
    settings: OperatorSettings,
    appmesh_settings: OperatorSettings,
) -> None:
    rendered = templates(services, settings) + templates(services, appmesh_settings)
    assert len(rendered) == 10
    for template in rendered:
        assert restricted_violations(template["spec"], template["metadata"]) == []
        assert read_only_root_violations(template["spec"]) == []
        for container in [
            *template["spec"].get("initContainers", []),
            *template["spec"]["containers"],
        ]:
            context = container["securityContext"]
            assert isinstance(context["runAsUser"], int) and context["runAsUser"] > 0


@pytest.fixture
def compliant(services: dict[str, MeshService], settings: OperatorSettings) -> dict[str, Any]:
    spec: dict[str, Any] = copy.deepcopy(templates(services, settings)[0]["spec"])
    return spec


BREAKS = [
    ("hostNetwork", lambda s: s.update(hostNetwork=True), "spec.hostNetwork"),
    (
        "privileged",
        lambda s: s["containers"][0]["securityContext"].update(privileged=True),
        "spec.containers[0].securityContext.privileged",
    ),
    (
        "escalation",
        lambda s: s["initContainers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "spec.initContainers[0].securityContext.allowPrivilegeEscalation",
    ),
    (
        "root",
        lambda s: s["containers"][0]["securityContext"].update(runAsUser=0),
        "spec.containers[0].securityContext.runAsUser",
    ),
    (
        "non-root off",
        lambda s: s["containers"][0]["securityContext"].update(runAsNonRoot=False),
        "spec.containers[0].securityContext.runAsNonRoot",
    ),
    (
        "capabilities kept",
        lambda s: s["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
        "spec.containers[0].securityContext.capabilities.drop",
    ),
    (
        "capability added",
        lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        "spec.containers[0].securityContext.capabilities.add",
    ),
    (
        "unconfined seccomp",
        lambda s: s["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "spec.securityContext.seccompProfile.type",
    ),
    (
        "hostPath",
        lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "spec.volumes[4]",
    ),
    (
        "hostPort",
        lambda s: s["containers"][0]["ports"][0].update(hostPort=80),
        "spec.containers[0].ports[0].hostPort",
    ),
    (
        "unsafe sysctl",
        lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "spec.securityContext.sysctls",
    ),
]


@pytest.mark.parametrize(("case", "edit", "field"), BREAKS, ids=[b[0] for b in BREAKS])
def test_checker_names_the_broken_field(
    compliant: dict[str, Any], case: str, edit: Any, field: str
) -> None:
    edit(compliant)
    violations = restricted_violations(compliant)
    assert violations, case
    assert any(v.startswith(field) for v in violations), violations


def test_seccomp_and_non_root_may_come_from_the_pod_or_every_container(
    compliant: dict[str, Any],
) -> None:
    for container in [*compliant["initContainers"], *compliant["containers"]]:
        del container["securityContext"]["seccompProfile"]
        del container["securityContext"]["runAsNonRoot"]
    assert restricted_violations(compliant) == []  # the pod-level defaults cover them
    del compliant["securityContext"]
    fields = {v.split(":")[0] for v in restricted_violations(compliant)}
    assert "spec.containers[0].securityContext.seccompProfile.type" in fields
    assert "spec.initContainers[0].securityContext.runAsNonRoot" in fields


def test_read_only_root(compliant: dict[str, Any]) -> None:
    compliant["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    assert read_only_root_violations(compliant) == [
        "spec.containers[0].securityContext.readOnlyRootFilesystem: must be true"
    ]
