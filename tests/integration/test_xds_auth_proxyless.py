"""The authenticated xDS channel, local mode, for proxyless gRPC: grpcio's own xDS client, given
the bootstrap the plan renders (``tls`` channel credentials with the mesh root, the node's
token in a ``jwt_token_file``), proves its node to the secured control plane like an Envoy.

Each client is a process of its own (a process has one xDS client) dialling
``xds:///payments`` as node ``proxyless~orders~0`` of the proxyless MeshService orders:

- with its own token it is served (connected, its snapshot ACKed) and nothing is refused,
  with or without mTLS between the sidecars;
- with another node's token (the orders sidecar's) its ADS call ends PERMISSION_DENIED;
- with no token (no ``call_creds``) it ends UNAUTHENTICATED;
- without ``GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS`` grpcio drops the ``call_creds``:
  UNAUTHENTICATED too (why the plan and the kit set it).

Each refusal is counted in ``grpcmesh_xds_refusals_total`` and never registers the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpcmesh_control.local import credential
from grpcmesh_control.local.mesh_ca import CA_DIR, CA_ROOT_FILE
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_control.mesh.translate.proxyless import CALL_CREDS_GATE, grpc_bootstrap
from tests.integration.test_control_plane_envoy import (
    EXAMPLES,
    NODE_ID,
    TIMEOUT,
    _sample,
    _text,
    get_json,
    in_process_control_plane,
    poll,
    write_endpoints,
)
from tests.loopback import free_port

pytestmark = pytest.mark.slow

PROXYLESS = NodeId.proxyless("orders", "0")
CALL_TIMEOUT_S = 5.0
# One call on xds:///payments: its status and details (gRPC fails a call whose channel's xDS
# resources failed with the ADS call's status in the details). Then wait for stdin to close, so
# the ADS stream stays up while the test looks at the control plane.
CLIENT = f"""
import json, sys, grpc
channel = grpc.insecure_channel("xds:///payments")
call = channel.unary_unary("/grpcmesh.shop.v1.PaymentService/Charge")
try:
    call(b"", timeout={CALL_TIMEOUT_S})
    print(json.dumps({{"code": "OK", "details": ""}}), flush=True)
except grpc.RpcError as exc:
    print(json.dumps({{"code": exc.code().name, "details": exc.details()}}), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(EXAMPLES, run / "resources")
    orders = run / "resources" / "orders.yaml"
    document = yaml.safe_load(orders.read_text())
    document["spec"]["proxyless"] = True
    orders.write_text(yaml.safe_dump(document))
    write_endpoints(run, ("payments", free_port(), True))
    return run


def _bootstrap(xds: str, state_dir: Path, token_file: Path | None) -> str:
    node = ProxyNode(PROXYLESS, egress_port=free_port())
    root = str(state_dir / CA_DIR / CA_ROOT_FILE)
    return json.dumps(
        grpc_bootstrap(
            node, xds, trusted_ca=root, token_file=None if token_file is None else str(token_file)
        )
    )


@contextlib.asynccontextmanager
async def proxyless_client(bootstrap: str, *, gate: bool = True) -> AsyncIterator[dict[str, Any]]:
    """A grpcio process with ``bootstrap``: the outcome of its one call, while it runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env["GRPC_XDS_BOOTSTRAP_CONFIG"] = bootstrap
    if gate:
        env[CALL_CREDS_GATE] = "true"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = await process.stdout.readline()
        assert line, f"the client exited ({await process.wait()}) without a result"
        yield json.loads(line)
    finally:
        process.stdin.close()
        try:
            async with asyncio.timeout(TIMEOUT):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def _token_file(tmp_path: Path, state_dir: Path, node_id: str) -> Path:
    path = tmp_path / f"{node_id}.token"
    path.write_text(credential.node_token(credential.read(state_dir), node_id))
    path.chmod(0o600)
    return path


async def _refusals(admin_url: str) -> dict[str, float]:
    metrics = await _text(f"{admin_url}/metrics")
    return {
        reason: _sample(metrics, f'grpcmesh_xds_refusals_total{{reason="{reason}"}}')
        for reason in ("unauthenticated", "wrong_node")
    }


@pytest.mark.parametrize("mtls", [True, False], ids=["mtls", "mtls-off"])
async def test_a_proxyless_client_with_its_token_is_served(
    state_dir: Path, tmp_path: Path, mtls: bool
) -> None:
    """With mTLS between sidecars off too: ADS is still TLS (the mesh CA issues the xDS
    server's certificate), or gRPC would not send the token."""
    async with in_process_control_plane(state_dir, mtls=mtls, secure_xds=True) as served:
        token = _token_file(tmp_path, state_dir, str(PROXYLESS))
        async with proxyless_client(_bootstrap(served.xds, state_dir, token)) as outcome:
            # Served: whatever became of the call (nothing listens at payments' endpoint), it
            # was not an xDS refusal.
            assert "xDS call failed" not in outcome["details"], outcome

            async def acked() -> dict[str, Any] | None:
                status = await get_json(f"{served.admin_url}/status")
                node: dict[str, Any] | None = next(
                    (n for n in status["nodes"] if n["id"] == str(PROXYLESS)), None
                )
                if node is None or not node["connected"] or node["acked_version"] is None:
                    return None
                return node if node["acked_version"] == node["snapshot_version"] else None

            await poll(acked, f"{PROXYLESS} to ACK its snapshot")
        assert await _refusals(served.admin_url) == {"unauthenticated": 0, "wrong_node": 0}


@pytest.mark.parametrize(
    ("token_of", "gate", "code", "reason"),
    [
        (NODE_ID, True, "PERMISSION_DENIED", "wrong_node"),  # the orders sidecar's token
        (None, True, "UNAUTHENTICATED", "unauthenticated"),  # no call_creds at all
        (str(PROXYLESS), False, "UNAUTHENTICATED", "unauthenticated"),  # gRPC drops them
    ],
)
async def test_a_proxyless_client_without_its_own_token_gets_nothing(
    state_dir: Path, tmp_path: Path, token_of: str | None, gate: bool, code: str, reason: str
) -> None:
    async with in_process_control_plane(state_dir, secure_xds=True) as served:
        token = None if token_of is None else _token_file(tmp_path, state_dir, token_of)
        bootstrap = _bootstrap(served.xds, state_dir, token)
        async with proxyless_client(bootstrap, gate=gate) as outcome:
            assert outcome["code"] == "UNAVAILABLE", outcome
            assert (
                f"xDS call failed with no responses received; status: {code}"
                in (outcome["details"])
            ), outcome
            refusals = await _refusals(served.admin_url)
            assert refusals[reason] >= 1, refusals
            assert sum(refusals.values()) == refusals[reason], refusals
            assert all(n.node_id != str(PROXYLESS) for n in served.cp.cache.nodes())
