"""The wheel, installed outside the checkout, is self-contained: what it reads at run time (the
CRD schema, the reference resources) ships inside it, and it parses, renders and translates
with nothing from this repository on its path. (tests/cluster/test_chart_install.py runs the
same install as the operator, serving.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.package import InstalledPackage
from tests.shared import REPO

_SCRIPT = """
import json
from importlib.resources import files

import grpcmesh_control
from grpcmesh_control.cluster.objects import OperatorSettings, OwnerRef, desired_objects
from grpcmesh_control.mesh.model import parse_mesh_services_yaml
from grpcmesh_control.mesh.translate import NodeId, ProxyNode, Registry, build_snapshot

examples = sorted((files("grpcmesh_control") / "examples").iterdir(), key=lambda p: p.name)
services = [
    svc
    for path in examples
    if path.name.endswith(".yaml")
    for svc in parse_mesh_services_yaml(path.read_text(), source=path.name)
]
objects = {
    svc.name: [
        o["kind"]
        for o in desired_objects(
            svc, namespace="shop", owner=OwnerRef(svc.name, "uid"), settings=OperatorSettings()
        )
    ]
    for svc in services
}
registry = Registry.build(services, {}, None)
snapshot = build_snapshot(registry, ProxyNode(NodeId.sidecar("orders", "0")))
print(json.dumps({
    "package": grpcmesh_control.__file__,
    "services": sorted(s.name for s in services),
    "objects": objects,
    "listeners": sorted(l.name for l in snapshot.listeners),
}))
"""


def test_the_installed_wheel_parses_renders_and_translates(
    installed_package: InstalledPackage, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(installed_package.bin / "python"), "-c", _SCRIPT],
        cwd=tmp_path,  # outside the checkout: nothing of it is importable
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert not Path(found["package"]).is_relative_to(REPO), found["package"]
    assert found["services"] == ["catalog", "inventory", "orders", "payments"]
    assert all("Deployment" in kinds and "Service" in kinds for kinds in found["objects"].values())
    assert found["listeners"] == ["egress", "inbound"]


def test_the_installed_cli_runs(installed_package: InstalledPackage, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(installed_package.grpcmesh), "operator", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "operator" in result.stdout
