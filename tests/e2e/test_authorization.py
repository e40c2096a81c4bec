"""Authorization end to end (local mode, real Envoys, mTLS STRICT): the reference saga runs
with rules that allow exactly the calls it makes, while a MeshService the rules do not name,
and a named caller asking for a method it was not given, are refused PERMISSION_DENIED at
the callee's sidecar, and each refusal is counted by caller and method in the metric the
``GrpcmeshCallsDenied`` alert reads.

The refused callers present real workload certificates from the mesh's own CA (what their
sidecars would present), straight to payments' inbound listener.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest
import yaml

from grpcmesh_control.local.mesh_ca import load_or_create_mesh_ca
from grpcmesh_control.mesh.ca import Issued, trust_bundle
from grpcmesh_control.mesh.model.identity import SpiffeId, workload_identity
from grpcmesh_control.mesh.translate.authorization import denial_policy_name
from grpcmesh_loadgen import run_load
from tests.e2e.harness import REPO, Mesh, _get, eventually
from tests.mesh_security import REFERENCE_RULES, SHOP, grpc_status, rbac_denials

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    resources = tmp_path_factory.mktemp("authz-resources")
    for source in sorted((REPO / "manifests" / "examples").glob("*.yaml")):
        doc = yaml.safe_load(source.read_text())
        doc["spec"]["authorization"] = {"rules": REFERENCE_RULES[doc["metadata"]["name"]]}
        (resources / source.name).write_text(yaml.safe_dump(doc))
    mesh = Mesh(tmp_path_factory.mktemp("authz") / "run", resources)
    mesh.start()
    try:
        yield mesh
    finally:
        mesh.stop()


def _issue(mesh: Mesh, identity: SpiffeId) -> tuple[Issued, bytes]:
    now = dt.datetime.now(dt.UTC)
    ca = load_or_create_mesh_ca(mesh.run_dir, now)
    return ca.issue_workload(identity, now, ttl=dt.timedelta(minutes=5)), trust_bundle(
        [ca.root], now
    )


async def _denials(mesh: Mesh) -> dict[str, int]:
    """payments' sidecar's denial counters by policy name, as Prometheus scrapes them."""
    replica = mesh.replica("payments/v1-0")
    text = await asyncio.to_thread(_get, f"http://{replica.sidecar_admin}/stats/prometheus")
    return rbac_denials(text)


async def test_the_saga_runs_with_rules_that_allow_exactly_its_calls(mesh: Mesh) -> None:
    report = await run_load(mesh.state.ingress, orders=20, rate=10.0, deadline_s=10.0)
    assert report.succeeded, (report.statuses, report.outcomes, report.error_samples)
    assert report.unexpected_outcomes == 0
    assert all(count == 0 for count in (await _denials(mesh)).values())


@pytest.mark.parametrize(
    ("caller", "method", "counted_as"),
    [
        ("inventory", "Charge", "other"),  # a MeshService the rules do not name
        ("orders", "GetPayment", "orders"),  # a named caller, a method it was not given
    ],
)
async def test_a_caller_the_rules_do_not_allow_is_denied_and_counted(
    mesh: Mesh, caller: str, method: str, counted_as: str
) -> None:
    replica = mesh.replica("payments/v1-0")
    client, roots = _issue(mesh, workload_identity(caller))
    policy = denial_policy_name(counted_as, f"PaymentService/{method}")
    before = (await _denials(mesh)).get(policy, 0)
    path = f"/{SHOP}.PaymentService/{method}"
    status = await asyncio.to_thread(grpc_status, replica.sidecar_inbound, path, client, roots)
    assert status == "7"  # PERMISSION_DENIED

    async def counted() -> int | None:
        now = (await _denials(mesh)).get(policy, 0)
        return now if now > before else None

    await eventually(counted, timeout=10, what=f"payments' sidecar counts {policy}")
