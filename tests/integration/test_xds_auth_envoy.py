"""The authenticated xDS channel, local mode: the control plane (``secure_xds``) serves ADS over
TLS with a mesh-CA certificate, only to a caller sending its node token, and only that node's
configuration.

A real Envoy with its token in ``initial_metadata`` (on the built-in ``envoy_grpc`` client)
and the mesh root as its ``xds_cluster`` trust gets its config, workload certificate included;
grpcio ADS clients (as the benchmark's fake Envoys speak) without a token, with a bad one, or
with node A's token asking as node B (first request or a later one) are refused before they
receive anything, and each refusal is counted in ``grpcmesh_xds_refusals_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from grpcmesh_control.local import credential
from grpcmesh_control.local.mesh_ca import CA_DIR, CA_ROOT_FILE
from grpcmesh_control.mesh.translate.bootstrap import XdsTransport
from grpcmesh_control.mesh.xds import CLUSTER, SECRET
from tests.integration.test_control_plane_envoy import (
    EXAMPLES,
    NODE_ID,
    TIMEOUT,
    _ready,
    _sample,
    _text,
    converged,
    in_process_control_plane,
    poll,
    running_envoy,
    write_endpoints,
)
from tests.loopback import free_port

OTHER_NODE = "sidecar~payments~v1-0"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(EXAMPLES, run / "resources")
    write_endpoints(run, ("payments", free_port(), True))
    return run


def _root(state_dir: Path) -> Path:
    return state_dir / CA_DIR / CA_ROOT_FILE


@pytest.mark.parametrize("transport", [XdsTransport.SOTW, XdsTransport.DELTA])
async def test_an_envoy_with_its_token_gets_its_config_over_tls(
    state_dir: Path, tmp_path: Path, transport: XdsTransport
) -> None:
    async with in_process_control_plane(state_dir, secure_xds=True) as served:
        token = credential.read(state_dir)
        async with running_envoy(
            tmp_path,
            served.xds,
            transport,
            xds_metadata=credential.node_metadata(token, NODE_ID),
            xds_trusted_ca=_root(state_dir),
        ) as envoy:
            await poll(lambda: _ready(envoy), "Envoy /ready")
            node = await converged(served.admin_url)
            assert node["secrets"] is not None and node["secrets"]["acked"]
            assert set(await envoy.listeners()) == {"inbound", "egress"}
            # The ADS connection is TLS, verified against the mesh root.
            assert ((await envoy.stat("cluster.xds_cluster.ssl.handshake")) or 0) >= 1
            metrics = await _text(f"{served.admin_url}/metrics")
            for reason in ("unauthenticated", "wrong_node"):
                assert _sample(metrics, f'grpcmesh_xds_refusals_total{{reason="{reason}"}}') == 0


async def test_an_envoy_with_another_nodes_token_gets_nothing(
    state_dir: Path, tmp_path: Path
) -> None:
    async with in_process_control_plane(state_dir, secure_xds=True) as served:
        token = credential.read(state_dir)
        async with running_envoy(
            tmp_path,
            served.xds,
            XdsTransport.DELTA,
            xds_metadata=credential.node_metadata(token, OTHER_NODE),
            xds_trusted_ca=_root(state_dir),
        ) as envoy:

            async def refused_twice() -> bool | None:
                metrics = await _text(f"{served.admin_url}/metrics")
                wrong = _sample(metrics, 'grpcmesh_xds_refusals_total{reason="wrong_node"}')
                return True if wrong >= 2 else None  # Envoy retried and was refused again

            await poll(refused_twice, "the control plane to refuse the Envoy (twice)")
            assert await envoy.stat("control_plane.connected_state") == 0
            assert (await envoy.get("/ready"))[0] != 200
            assert not [n for n in served.cp.cache.nodes() if n.connected]


# --- grpcio ADS clients --------------------------------------------------------------------


def _request(node_id: str, type_url: str = CLUSTER) -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=node_id), type_url=type_url)


async def _ads(
    xds: str,
    root: bytes,
    requests: Sequence[discovery_pb2.DiscoveryRequest],
    metadata: dict[str, str] | None,
    *,
    then: discovery_pb2.DiscoveryRequest | None = None,
    enough: int | None = None,
) -> tuple[list[discovery_pb2.DiscoveryResponse], grpc.aio.AioRpcError | None]:
    """Send ``requests`` (and ``then`` after the first response), collect responses until the
    stream fails, ``enough`` arrived or TIMEOUT passes; the responses and the error (None: not
    refused)."""
    # Explicit writes: with a request iterator, grpcio may report a write racing the server's
    # refusal as INTERNAL instead of the refusal's status.
    received: list[discovery_pb2.DiscoveryResponse] = []
    async with grpc.aio.secure_channel(xds, grpc.ssl_channel_credentials(root)) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources(metadata=tuple((metadata or {}).items()))

        async def write(request: discovery_pb2.DiscoveryRequest) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.write(request)

        for request in requests:
            await write(request)
        try:
            async with asyncio.timeout(TIMEOUT):
                while (response := await call.read()) is not grpc.aio.EOF:
                    received.append(response)
                    if then is not None and len(received) == 1:
                        await write(then)
                    if enough is not None and len(received) >= enough:
                        call.cancel()
                        return received, None
            code = await call.code()
            assert code is not grpc.StatusCode.OK, "the server ended the stream"
            return received, grpc.aio.AioRpcError(
                code,
                await call.initial_metadata(),
                await call.trailing_metadata(),
                await call.details(),
            )
        except grpc.aio.AioRpcError as exc:
            return received, exc
        except TimeoutError:
            call.cancel()
    return received, None


async def _refusals(admin_url: str, reason: str) -> float:
    return _sample(
        await _text(f"{admin_url}/metrics"), f'grpcmesh_xds_refusals_total{{reason="{reason}"}}'
    )


async def test_a_client_without_a_valid_token_is_unauthenticated(state_dir: Path) -> None:
    async with in_process_control_plane(state_dir, secure_xds=True) as served:
        root = _root(state_dir).read_bytes()
        token = credential.read(state_dir)
        forged = credential.node_metadata("not the mesh credential", NODE_ID)
        wrong_scheme = {"authorization": f"Basic {credential.node_token(token, NODE_ID)}"}
        for metadata in (None, forged, wrong_scheme, {"authorization": "Bearer garbage"}):
            received, error = await _ads(served.xds, root, [_request(NODE_ID)], metadata)
            assert error is not None, metadata
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED, (metadata, error)
            assert "node's credential" in (error.details() or "")
            assert received == []
        assert await _refusals(served.admin_url, "unauthenticated") == 4
        assert not served.cp.cache.nodes()  # never registered as connected

        # The right token on the same server is served (and the TLS name checks out).
        received, error = await _ads(
            served.xds,
            root,
            [_request(NODE_ID)],
            credential.node_metadata(token, NODE_ID),
            enough=1,
        )
        assert error is None and [r.type_url for r in received] == [CLUSTER]


async def test_node_a_cannot_ask_for_node_b(state_dir: Path) -> None:
    async with in_process_control_plane(state_dir, secure_xds=True) as served:
        root = _root(state_dir).read_bytes()
        token = credential.read(state_dir)
        a_token = credential.node_metadata(token, OTHER_NODE)
        # Node B (the orders sidecar) connects with its own token: it has config to steal.
        received, error = await _ads(
            served.xds,
            root,
            [_request(NODE_ID)],
            credential.node_metadata(token, NODE_ID),
            enough=1,
        )
        assert error is None and received
        assert served.cp.cache.node_snapshot(NODE_ID) is not None

        received, error = await _ads(
            served.xds, root, [_request(NODE_ID), _request(NODE_ID, SECRET)], a_token
        )
        assert error is not None and error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert NODE_ID in (error.details() or "")
        assert received == []

        # Asking as itself first, then switching to B on the same stream: refused at the switch.
        received, error = await _ads(
            served.xds, root, [_request(OTHER_NODE)], a_token, then=_request(NODE_ID, SECRET)
        )
        assert error is not None and error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert all(r.type_url != SECRET for r in received)
        assert await _refusals(served.admin_url, "wrong_node") == 2


async def test_plaintext_to_the_secured_xds_port_fails(state_dir: Path) -> None:
    async with in_process_control_plane(state_dir, secure_xds=True) as served:
        token = credential.read(state_dir)
        async with grpc.aio.insecure_channel(served.xds) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(
                iter([_request(NODE_ID)]),
                metadata=tuple(credential.node_metadata(token, NODE_ID).items()),
            )
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                async with asyncio.timeout(TIMEOUT):
                    responses: list[Any] = [r async for r in call]
                    assert responses == []
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
