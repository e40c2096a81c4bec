"""Node tokens (``local.credential``): each Envoy and proxyless app proves its own node id to the
xDS server with an HS256 JWT, and the plan renders its token into its bootstrap or token file
only (the files written private)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from grpcmesh_control.local import credential
from grpcmesh_control.local.plan import (
    FILE_MODE,
    XDS_ROOTS_SDS_FILE,
    XDS_TOKEN_FILE,
    LocalSettings,
    PlanError,
    build_plan,
    replan,
)
from grpcmesh_control.mesh.model import MeshService
from grpcmesh_control.mesh.translate.bootstrap import XDS_ROOTS_SECRET
from tests.unit.local.conftest import FIRST_PORT

KEY = "the mesh credential"
NODE = "sidecar~orders~0"
EXPIRES = 2_000_000_000


def _token(node_id: str) -> str:
    return credential.node_token(KEY, node_id, expires=EXPIRES)


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    document: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 3))
    return document


def _b64(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


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


def test_a_node_token_is_a_jwt_grpc_can_read() -> None:
    """gRPC's ``jwt_token_file`` call credentials split the token in three and read the
    payload's ``exp`` (gRFC A97): an HS256 JWT naming the node in ``sub``."""
    token = credential.node_token(KEY, NODE, expires=2_000_000_000)
    header, _, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "typ": "JWT"}
    assert _claims(token) == {
        "aud": "grpcmesh-xds",
        "exp": 2_000_000_000,
        "iat": 2_000_000_000 - credential.NODE_TOKEN_LIFETIME_S,
        "sub": NODE,
    }
    assert "=" not in token and len(base64.urlsafe_b64decode(signature + "=")) == 32
    # A plan renders the same token twice (replans restart nothing).
    assert token == credential.node_token(KEY, NODE, expires=2_000_000_000)
    assert abs(_claims(credential.node_token(KEY, NODE))["exp"] - time.time()) == pytest.approx(
        credential.NODE_TOKEN_LIFETIME_S, abs=5
    )


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer nodot"},
        {"authorization": "Bearer !!!.???.***"},
        {"authorization": "Bearer a.b.c.d"},
        {"authorization": f"Basic {credential.node_token(KEY, NODE)}"},
        credential.node_metadata("another mesh's credential", NODE),
        {"authorization": f"Bearer {credential.node_token(KEY, NODE)}x"},
    ],
)
async def test_missing_malformed_or_foreign_tokens_prove_nothing(metadata: dict[str, str]) -> None:
    assert await credential.NodeTokens(KEY).authenticate(metadata) is None


async def test_a_token_edited_to_name_another_node_does_not_verify() -> None:
    header, _, signature = credential.node_token(KEY, NODE).split(".")
    other = credential.node_token(KEY, "sidecar~payments~v1-0").split(".")[1]
    assert (
        await credential.NodeTokens(KEY).authenticate(
            {"authorization": f"Bearer {header}.{other}.{signature}"}
        )
        is None
    )
    edited = _b64({**_claims(credential.node_token(KEY, NODE)), "sub": "sidecar~payments~v1-0"})
    assert (
        await credential.NodeTokens(KEY).authenticate(
            {"authorization": f"Bearer {header}.{edited}.{signature}"}
        )
        is None
    )


async def test_an_expired_token_does_not_verify() -> None:
    now = 1_900_000_000.0
    tokens = credential.NodeTokens(KEY, clock=lambda: now)
    fresh = credential.node_metadata(KEY, NODE, expires=int(now) + 1)
    assert await tokens.authenticate(fresh) == NODE
    expired = credential.node_metadata(KEY, NODE, expires=int(now))
    assert await tokens.authenticate(expired) is None


def _signed(header: dict[str, Any], claims: dict[str, Any]) -> dict[str, str]:
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    mac = hmac.new(KEY.encode(), signing_input.encode(), hashlib.sha256).digest()
    signature = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    return {"authorization": f"Bearer {signing_input}.{signature}"}


@pytest.mark.parametrize(
    ("header", "claims"),
    [
        ({"alg": "none", "typ": "JWT"}, {"aud": "grpcmesh-xds", "exp": 2**40, "sub": NODE}),
        ({"alg": "HS256", "typ": "JWT"}, {"aud": "another-audience", "exp": 2**40, "sub": NODE}),
        ({"alg": "HS256", "typ": "JWT"}, {"exp": 2**40, "sub": NODE}),
        ({"alg": "HS256", "typ": "JWT"}, {"aud": "grpcmesh-xds", "sub": NODE}),
        ({"alg": "HS256", "typ": "JWT"}, {"aud": "grpcmesh-xds", "exp": "never", "sub": NODE}),
        ({"alg": "HS256", "typ": "JWT"}, {"aud": "grpcmesh-xds", "exp": 2**40, "sub": 7}),
    ],
)
async def test_a_signed_token_must_still_say_what_a_node_token_says(
    header: dict[str, Any], claims: dict[str, Any]
) -> None:
    """Signed with the credential, yet not a node token: another algorithm, audience, no
    expiry or no node."""
    assert await credential.NodeTokens(KEY).authenticate(_signed(header, claims)) is None
    ok = _signed({"alg": "HS256", "typ": "JWT"}, {"aud": "grpcmesh-xds", "exp": 2**40, "sub": NODE})
    assert await credential.NodeTokens(KEY).authenticate(ok) == NODE


def test_the_plan_gives_each_envoy_its_own_token_and_the_mesh_root(
    examples: tuple[MeshService, ...], settings: LocalSettings, tmp_path: Path
) -> None:
    root = tmp_path / "run" / "ca" / "ca.crt"
    secured = dataclasses.replace(
        settings, xds_credential=KEY, xds_trusted_ca=root, xds_token_expires=EXPIRES
    )
    plan = build_plan(examples, itertools.count(FIRST_PORT), secured)
    sds_file = settings.run_dir / XDS_ROOTS_SDS_FILE
    assert "--secure-xds" in plan.control_plane.process.argv
    bootstraps = {r.node_id: r.bootstrap for r in plan.replicas}
    bootstraps[plan.ingress.node_id] = plan.ingress.bootstrap
    for node_id, bootstrap in bootstraps.items():
        ads = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]
        assert "envoy_grpc" in ads
        assert ads["initial_metadata"] == [
            {"key": "authorization", "value": f"Bearer {_token(node_id)}"}
        ]
        (xds,) = bootstrap["static_resources"]["clusters"][:1]
        tls = xds["transport_socket"]["typed_config"]["common_tls_context"]
        combined = tls["combined_validation_context"]
        assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
            {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
        ]
        # The roots come from a file-based SDS document Envoy watches (a root rotation
        # replaces the bundle it names), written with the bootstraps.
        sds = combined["validation_context_sds_secret_config"]
        assert sds["name"] == XDS_ROOTS_SECRET
        assert sds["sds_config"]["path_config_source"]["path"] == str(sds_file)
    (document,) = json.loads(plan.files()[sds_file])["resources"]
    assert document["name"] == XDS_ROOTS_SECRET
    assert document["validation_context"]["trusted_ca"] == {"filename": str(root)}
    assert FILE_MODE == 0o600


def test_without_a_credential_the_plan_leaves_ads_open(
    examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    plan = build_plan(examples, itertools.count(FIRST_PORT), settings)
    assert "--secure-xds" not in plan.control_plane.process.argv
    ads = plan.ingress.bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert "initial_metadata" not in ads
    assert "transport_socket" not in plan.ingress.bootstrap["static_resources"]["clusters"][0]


def test_a_proxyless_app_gets_its_own_token_file_and_tls_to_the_xds_server(
    examples: tuple[MeshService, ...], settings: LocalSettings, tmp_path: Path
) -> None:
    root = tmp_path / "run" / "ca" / "ca.crt"
    secured = dataclasses.replace(
        settings, xds_credential=KEY, xds_trusted_ca=root, xds_token_expires=EXPIRES
    )
    services = tuple(dataclasses.replace(svc, proxyless=svc.name == "orders") for svc in examples)
    plan = build_plan(services, itertools.count(FIRST_PORT), secured)
    orders = plan.replica("orders/v1-1")
    assert orders.xds_token_path == orders.dir / XDS_TOKEN_FILE
    assert orders.xds_token == _token("proxyless~orders~v1-1")  # not the sidecar's
    assert plan.files()[orders.xds_token_path] == orders.xds_token  # no newline: sent as is
    (server,) = json.loads(orders.app.env["GRPCMESH_XDS_BOOTSTRAP"])["xds_servers"]
    assert server["channel_creds"] == [
        {"type": "tls", "config": {"ca_certificate_file": str(root)}}
    ]
    assert server["call_creds"] == [
        {"type": "jwt_token_file", "config": {"jwt_token_file": str(orders.xds_token_path)}}
    ]
    assert orders.app.env["GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"] == "true"
    catalog = plan.replica("catalog/v1-1")
    assert catalog.xds_token_path is None and catalog.xds_token is None
    assert "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS" not in catalog.app.env
    # Replanned with the same settings, the replica is the same (nothing restarts).
    assert build_plan(services, itertools.count(FIRST_PORT), secured).replica("orders/v1-1") == (
        orders
    )


def test_a_service_made_proxyless_live_restarts_with_its_token_file(
    examples: tuple[MeshService, ...], settings: LocalSettings, tmp_path: Path
) -> None:
    """``grpcmesh apply`` of ``spec.proxyless: true`` to a running secured mesh: the replan
    restarts orders' replicas (new app env) with their token files; nothing else changes."""
    secured = dataclasses.replace(
        settings,
        xds_credential=KEY,
        xds_trusted_ca=tmp_path / "run" / "ca" / "ca.crt",
        xds_token_expires=EXPIRES,
    )
    plan = build_plan(examples, itertools.count(FIRST_PORT), secured)
    services = tuple(dataclasses.replace(svc, proxyless=svc.name == "orders") for svc in examples)
    after = replan(plan, services, iter(()), secured)
    for replica in after.replicas:
        before = plan.replica(replica.key)
        if replica.service == "orders":
            assert replica.app != before.app and replica.xds_token_path is not None
            assert after.files()[replica.xds_token_path] == _token(
                f"proxyless~{replica.key.replace('/', '~')}"
            )
        else:
            assert replica == before


def test_a_proxyless_app_cannot_send_its_token_in_plaintext(
    examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    services = tuple(dataclasses.replace(svc, proxyless=svc.name == "orders") for svc in examples)
    secured = dataclasses.replace(settings, xds_credential=KEY)
    with pytest.raises(PlanError, match=r"spec\.proxyless needs the xDS server's TLS"):
        build_plan(services, itertools.count(FIRST_PORT), secured)
