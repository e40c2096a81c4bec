"""Node tokens (``local.credential``): each Envoy proves its own node id to the xDS server, and
the plan renders its token into its bootstrap only (the files written private)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from grpcmesh_control.local import credential
from grpcmesh_control.local.plan import FILE_MODE, LocalSettings, build_plan
from grpcmesh_control.mesh.model import MeshService
from tests.unit.local.conftest import FIRST_PORT

KEY = "the mesh credential"
NODE = "sidecar~orders~0"


async def test_a_node_token_proves_its_node_and_nothing_else() -> None:
    tokens = credential.NodeTokens(KEY)
    metadata = credential.node_metadata(KEY, NODE)
    assert metadata == {"authorization": f"Bearer {credential.node_token(KEY, NODE)}"}
    assert await tokens.authenticate(metadata) == NODE
    assert tokens.permits(NODE, NODE)
    assert not tokens.permits(NODE, "sidecar~payments~v1-0")
    # Distinct per node, and not the credential itself.
    assert credential.node_token(KEY, NODE) != credential.node_token(KEY, "ingress~gateway")
    assert KEY not in credential.node_token(KEY, NODE)


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer nodot"},
        {"authorization": "Bearer !!!.???"},
        {"authorization": f"Basic {credential.node_token(KEY, NODE)}"},
        credential.node_metadata("another mesh's credential", NODE),
    ],
)
async def test_missing_malformed_or_foreign_tokens_prove_nothing(metadata: dict[str, str]) -> None:
    assert await credential.NodeTokens(KEY).authenticate(metadata) is None


async def test_a_token_edited_to_name_another_node_does_not_verify() -> None:
    mac = credential.node_token(KEY, NODE).partition(".")[2]
    other = credential.node_token(KEY, "sidecar~payments~v1-0").partition(".")[0]
    forged = {"authorization": f"Bearer {other}.{mac}"}
    assert await credential.NodeTokens(KEY).authenticate(forged) is None


def test_the_plan_gives_each_envoy_its_own_token_and_the_mesh_root(
    examples: tuple[MeshService, ...], settings: LocalSettings, tmp_path: Path
) -> None:
    root = tmp_path / "run" / "ca" / "ca.crt"
    secured = dataclasses.replace(settings, xds_credential=KEY, xds_trusted_ca=root)
    plan = build_plan(examples, itertools.count(FIRST_PORT), secured)
    assert "--secure-xds" in plan.control_plane.process.argv
    bootstraps = {r.node_id: r.bootstrap for r in plan.replicas}
    bootstraps[plan.ingress.node_id] = plan.ingress.bootstrap
    for node_id, bootstrap in bootstraps.items():
        ads = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]
        assert "envoy_grpc" in ads
        assert ads["initial_metadata"] == [
            {"key": "authorization", "value": f"Bearer {credential.node_token(KEY, node_id)}"}
        ]
        (xds,) = bootstrap["static_resources"]["clusters"][:1]
        tls = xds["transport_socket"]["typed_config"]["common_tls_context"]
        assert tls["validation_context"]["trusted_ca"] == {"filename": str(root)}
        assert tls["validation_context"]["match_typed_subject_alt_names"] == [
            {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
        ]
    assert FILE_MODE == 0o600


def test_without_a_credential_the_plan_leaves_ads_open(
    examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    plan = build_plan(examples, itertools.count(FIRST_PORT), settings)
    assert "--secure-xds" not in plan.control_plane.process.argv
    ads = plan.ingress.bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert "initial_metadata" not in ads
    assert "transport_socket" not in plan.ingress.bootstrap["static_resources"]["clusters"][0]
