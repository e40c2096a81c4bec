"""The five images, built from our Dockerfiles and run as real containers (podman, through
``../shared/images/image-kit``), the way the chart runs them: read-only root filesystem, the
image's own non-root USER, writable only /tmp and the service's working directory (the
operator mounts an emptyDir there; here a tmpfs owned by the user).

Each service serves gRPC health and /metrics on loopback ports chosen here, and stops cleanly
on SIGTERM; the operator image runs ``grpcmesh operator --help``, starts its runtime as far
as the missing credentials, and parses every example MeshService against the reference
descriptor set; no image holds a distribution it does not run. Sizes are in the terminal
summary (conftest.py) and docs/develop-kind.md.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from grpcmesh_control.cluster.objects.settings import AppDefaults
from tests.deploy.checks import IMAGE_EXTRA, excluded_distributions, normalized
from tests.images.kit import REPORT, BuiltImage, ImageKit, container_name
from tests.loopback import LOCALHOST, free_port, poll
from tests.scrape import scrape
from tests.shared import REPO

# The first test to run builds the five images (several minutes on a fresh machine; each
# podman call has its own timeout, see kit.py).
pytestmark = pytest.mark.timeout(1800)

SERVICES = [image for image, extra in IMAGE_EXTRA.items() if not extra]
OPERATOR = "grpcmesh-operator"
START_TIMEOUT = 60.0  # a Python service starting in a container on a loaded 2-core machine
READ_ONLY = ("--read-only", "--tmpfs", "/tmp")

# Run inside an image by its own python: what is installed, how big the venv is, and whether
# an envoy executable is anywhere on PATH or in the venv.
_INSPECT = """
import importlib.metadata, json, os, shutil
size = 0
for root, _, names in os.walk("/opt/venv"):
    size += sum(os.lstat(os.path.join(root, n)).st_size for n in names)
print(json.dumps({
    "distributions": sorted({d.metadata["Name"] for d in importlib.metadata.distributions()}),
    "venv_bytes": size,
    "envoy": shutil.which("envoy") or os.path.exists("/opt/venv/bin/envoy") or None,
    "uid": os.getuid(),
}))
"""

# Every module of the operator's package, imported in the operator image. Only the Grafana
# tooling (dashboards, chart assets, their writer) needs the `local` extra; anything else that
# fails here would fail the operator at run time.
_IMPORT_ALL = """
import importlib, json, pkgutil, grpcmesh_control
failed = {}
for info in pkgutil.walk_packages(grpcmesh_control.__path__, "grpcmesh_control."):
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
print(json.dumps(failed))
"""
_GRAFANA_TOOLING = {
    "grpcmesh_control.observability.__main__",
    "grpcmesh_control.observability.dashboards",
}

# Parse every example the way the operator does in a cluster: the CRD schema from package
# data, the methods against the reference descriptor set (the chart's ConfigMap payload).
_PARSE_EXAMPLES = """
import json
from importlib.resources import files
from pathlib import Path
from grpcmesh_control.mesh.catalogs import catalog_from_descriptor_set
from grpcmesh_control.mesh.model.parse import parse_mesh_services_yaml
catalog = catalog_from_descriptor_set(Path("/descriptors/grpcmesh.shop.v1.binpb").read_bytes())
found = {}
packaged = files("grpcmesh_control") / "examples"
for where, root in (("mounted", Path("/examples")), ("packaged", packaged)):
    found[where] = {
        path.name: [
            service.name
            for service in parse_mesh_services_yaml(
                path.read_text(), source=path.name, catalog=catalog
            )
        ]
        for path in root.iterdir()
        if path.name.endswith(".yaml")
    }
print(json.dumps(found))
"""


def inspect(kit: ImageKit, image: BuiltImage) -> dict[str, Any]:
    found = kit.run(image.tag, "-c", _INSPECT, options=(*READ_ONLY, "--entrypoint", "python"))
    assert found.returncode == 0, found.stderr
    result: dict[str, Any] = json.loads(found.stdout)
    return result


def logs(kit: ImageKit, name: str) -> str:
    found = kit.podman("logs", "--tail", "40", name, check=False)
    return f"container {name} logs:\n{found.stdout}{found.stderr}"


@pytest.mark.parametrize("name", IMAGE_EXTRA)
def test_image_holds_only_what_it_runs(
    name: str, images: Mapping[str, BuiltImage], image_kit: ImageKit
) -> None:
    found = inspect(image_kit, images[name])
    REPORT.venv_bytes[name] = found["venv_bytes"]
    assert found["uid"] == AppDefaults().uid != 0
    installed = {normalized(d) for d in found["distributions"]}
    assert {"grpcio", "grpcmesh", "prometheus-client"} <= installed, installed
    for pattern in excluded_distributions(name):
        assert not fnmatch.filter(installed, pattern), f"{name} holds {pattern}"
    assert found["envoy"] is None, f"{name} holds an envoy executable"
    if IMAGE_EXTRA[name] == "operator":
        assert {"kopf", "kubernetes-asyncio", "cryptography", "xds-protos"} <= installed
    else:
        assert not {"typer", "aiohttp", "xds-protos", "jsonschema"} & installed, installed


def test_the_operator_image_imports_its_whole_package(
    images: Mapping[str, BuiltImage], image_kit: ImageKit
) -> None:
    found = image_kit.run(
        images[OPERATOR].tag, "-c", _IMPORT_ALL, options=(*READ_ONLY, "--entrypoint", "python")
    )
    assert found.returncode == 0, found.stderr
    failed: dict[str, str] = json.loads(found.stdout)
    assert set(failed) == _GRAFANA_TOOLING, failed
    assert all("grafana_foundation_sdk" in error for error in failed.values()), failed


def test_the_operator_image_runs_its_cli(
    images: Mapping[str, BuiltImage], image_kit: ImageKit
) -> None:
    """The image's ENTRYPOINT (grpcmesh) with the chart's kind of args."""
    found = image_kit.run(images[OPERATOR].tag, "operator", "--help", options=READ_ONLY)
    assert found.returncode == 0, found.stdout + found.stderr
    assert "Usage: grpcmesh operator" in found.stdout
    assert "--log-level" in found.stdout


def test_the_operator_image_starts_its_runtime(
    images: Mapping[str, BuiltImage], image_kit: ImageKit
) -> None:
    """``grpcmesh operator`` as the chart runs it, with no cluster to talk to: it gets as far
    as loading credentials (kopf and the Kubernetes client imported) and says what is missing
    in one line, as it would in a pod without a service account token."""
    found = image_kit.run(
        images[OPERATOR].tag,
        "operator",
        options=(*READ_ONLY, "--env", "KUBECONFIG=/nonexistent", "--env", "GRPCMESH_XDS_PORT=0"),
    )
    output = found.stdout + found.stderr
    assert found.returncode != 0, output
    assert "no Kubernetes credentials" in output, output
    assert "Traceback" not in output, output


def test_the_operator_image_parses_every_example(
    images: Mapping[str, BuiltImage], image_kit: ImageKit
) -> None:
    examples = REPO / "manifests" / "examples"
    descriptors = REPO / "charts" / "grpcmesh" / "files" / "descriptors"
    expected = {
        path.name: [doc["metadata"]["name"] for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in examples.glob("*.yaml")
    }
    assert expected and all(expected.values()), "manifests/examples holds no MeshService"
    found = image_kit.run(
        images[OPERATOR].tag,
        "-c",
        _PARSE_EXAMPLES,
        options=(
            *READ_ONLY,
            "--volume",
            f"{examples}:/examples:ro",
            "--volume",
            f"{descriptors}:/descriptors:ro",
            "--entrypoint",
            "python",
        ),
    )
    assert found.returncode == 0, found.stderr
    parsed = json.loads(found.stdout)
    assert parsed["mounted"] == expected
    assert parsed["packaged"] == expected


@pytest.mark.parametrize(
    ("script", "extra"),
    [("grpcmesh", "grpcmesh[operator]"), ("grpcmesh-loadgen", "grpcmesh[local]")],
)
def test_a_service_image_cli_names_the_extra_it_lacks(
    script: str, extra: str, images: Mapping[str, BuiltImage], image_kit: ImageKit
) -> None:
    """A service image holds the package's console scripts but not the CLIs' dependencies:
    each must say what to install, not end in a traceback."""
    found = image_kit.run(
        images["grpcmesh-catalog"].tag,
        "--help",
        options=(*READ_ONLY, "--entrypoint", script),
    )
    assert found.returncode == 1
    assert extra in found.stderr, found.stderr
    assert "Traceback" not in found.stderr


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _served_services(metrics: str) -> set[str]:
    return {
        sample.labels["grpc_service"]
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "grpc_server_started_total"
    }


def _proto_services(service: str) -> set[str]:
    """The gRPC services the reference protos define for ``service`` (e.g. catalog)."""
    module = importlib.import_module(f"grpcmesh.shop.v1.{service}_pb2")
    return {s.full_name for s in module.DESCRIPTOR.services_by_name.values()}


def _process_uids(kit: ImageKit, name: str) -> set[int]:
    """Real, effective, saved and filesystem UIDs of the container's main process, as this
    machine's /proc sees them (no user namespace: the container's UIDs are the host's)."""
    pid = kit.podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    (uids,) = re.findall(r"^Uid:\s+(.*)$", status, re.MULTILINE)
    return {int(uid) for uid in uids.split()}


@pytest.mark.parametrize("name", SERVICES)
async def test_a_service_serves_read_only_as_its_user(
    name: str, images: Mapping[str, BuiltImage], image_kit: ImageKit
) -> None:
    service = name.removeprefix("grpcmesh-")
    grpc_port, metrics_port = free_port(), free_port()
    container = container_name(service)
    options = (
        *READ_ONLY,
        # The working directory, where the default sqlite file lands: an emptyDir in the pod.
        "--tmpfs",
        f"/var/lib/{service}:U",
        "--env",
        f"GRPCMESH_PORT={grpc_port}",
        "--env",
        f"GRPCMESH_METRICS_PORT={metrics_port}",
        "--env",
        "GRPCMESH_DRAIN_SECONDS=0",
    )
    image_kit.start(images[name].tag, name=container, options=options)
    try:
        address = f"{LOCALHOST}:{grpc_port}"
        try:
            await poll(lambda: _serving(address), f"{name} SERVING", timeout=START_TIMEOUT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs(image_kit, container)}") from None
        # The service's own registry: the kit's series for each method of its gRPC service.
        metrics = await scrape(f"{LOCALHOST}:{metrics_port}")
        assert _served_services(metrics) == _proto_services(service), metrics
        uid = str(AppDefaults().uid)
        assert image_kit.podman("exec", container, "id", "-u").stdout.strip() == uid != "0"
        assert _process_uids(image_kit, container) == {AppDefaults().uid}
        # SIGTERM (what the kubelet sends): the service is PID 1 and exits cleanly.
        image_kit.podman("stop", "--time", "20", container, timeout=60)
        code = image_kit.podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout
        assert code.strip() == "0", logs(image_kit, container)
    finally:
        image_kit.remove(container)
