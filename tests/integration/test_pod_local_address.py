"""The real Envoy starts from what the operator renders with the pod IP as the pod-local
address: the shared bootstrap file with the per-pod ``--config-yaml`` merged over it, after
the kubelet expanded ``$(POD_IP)`` and ``$(POD_NAME)`` (``envoy --mode validate``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from grpcmesh_control.cluster.objects import OperatorSettings, desired_objects
from grpcmesh_control.cluster.objects.meta import OwnerRef
from grpcmesh_control.cluster.objects.settings import PodLocalAddress
from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.model import parse_mesh_services_yaml
from grpcmesh_control.mesh.translate.naming import ProxyNode
from tests.integration.test_envoy_validate import envoy_binary
from tests.loopback import LOCALHOST, free_port, poll
from tests.shared import REPO

pytestmark = pytest.mark.slow


def sidecar(local: PodLocalAddress) -> tuple[str, list[str]]:
    """(bootstrap file text, Envoy command as the kubelet runs it) of orders' sidecar."""
    text = (REPO / "manifests" / "examples" / "orders.yaml").read_text(encoding="utf-8")
    (svc,) = parse_mesh_services_yaml(text, catalog=load_catalog(), source="orders.yaml")
    settings = OperatorSettings(pod_local_address=local, xds_address="127.0.0.1:18000")
    objects = desired_objects(
        svc, namespace="default", owner=OwnerRef(name="orders", uid="u"), settings=settings
    )
    (bootstrap,) = [o for o in objects if o["metadata"]["name"] == "orders-envoy-bootstrap"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (proxy,) = deployment["spec"]["template"]["spec"]["initContainers"]
    command = [
        arg.replace("$(POD_IP)", "127.2.0.7").replace("$(POD_NAME)", "orders-v1-abc")
        for arg in proxy["command"]
    ]
    return str(bootstrap["data"]["envoy.json"]), command


def validate(
    bootstrap: str, command: list[str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "envoy.json"
    path.write_text(bootstrap, encoding="utf-8")
    argv = [str(envoy_binary()), *command[1:], "--mode", "validate"]
    argv[argv.index("-c") + 1] = str(path)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_envoy_accepts_the_pod_ip_sidecar(tmp_path: Path) -> None:
    bootstrap, command = sidecar(PodLocalAddress.POD_IP)
    assert "--config-yaml" in command
    run = validate(bootstrap, command, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OK" in run.stdout + run.stderr


def test_the_overlay_needs_a_file_without_its_health_listener(tmp_path: Path) -> None:
    # Negative control: over the loopback file (which has the health listener and its admin
    # cluster), the merge appends a second of each, and Envoy refuses the duplicate.
    loopback_file, _ = sidecar(PodLocalAddress.LOOPBACK)
    _, command = sidecar(PodLocalAddress.POD_IP)
    run = validate(loopback_file, command, tmp_path)
    assert run.returncode != 0
    assert "duplicate cluster 'admin'" in run.stdout + run.stderr


def test_the_control_plane_reads_the_merged_node_of_a_running_envoy(tmp_path: Path) -> None:
    """What the operator reads back from a running sidecar's node (the bootstrap file merged
    with --config-yaml by Envoy's own YAML loader) parses into the node it rendered. Ports
    written as ``15006.0`` came back as the string "15006.0" and the node got no config."""
    bootstrap, command = sidecar(PodLocalAddress.POD_IP)
    at = command.index("--config-yaml") + 1
    overlay = json.loads(command[at])
    # The admin on a free port of 127.0.0.1, so that concurrent runs do not collide; the node
    # metadata under test stays as rendered.
    admin = free_port()
    overlay["admin"]["address"]["socket_address"] = {"address": LOCALHOST, "port_value": admin}
    overlay["static_resources"] = {}
    command[at] = json.dumps(overlay)
    path = tmp_path / "envoy.json"
    path.write_text(bootstrap, encoding="utf-8")
    argv = [str(envoy_binary()), *command[1:], "--base-id", str(admin)]
    argv[argv.index("-c") + 1] = str(path)
    with (tmp_path / "envoy.log").open("wb") as log:
        envoy = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        node = asyncio.run(poll(lambda: _bootstrap_node(admin), "Envoy's admin", timeout=30))
    finally:
        envoy.terminate()
        envoy.wait(10)
    parsed = ProxyNode.from_node(node["id"], node["metadata"])
    assert (parsed.bind_address, parsed.local_address) == ("127.2.0.7", "127.2.0.7")
    assert (parsed.inbound_port, parsed.egress_port) == (15006, 15001)


async def _bootstrap_node(admin: int) -> dict[str, Any] | None:
    url = f"http://{LOCALHOST}:{admin}/config_dump"
    try:
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())
    except OSError:
        return None
    (dump,) = [c for c in json.loads(body)["configs"] if c["@type"].endswith("BootstrapConfigDump")]
    node: dict[str, Any] = dump["bootstrap"]["node"]
    return node
