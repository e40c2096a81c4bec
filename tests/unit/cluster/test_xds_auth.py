"""xDS authentication in a cluster, the pure parts: who a token is (TokenReview stubbed, its
answers cached no longer than the token lives), which nodes an account may ask for, the
RFC 8693 token exchange, and what a sidecar gets rendered when it is on. The real API server
and real Envoys: tests/cluster/test_xds_auth.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.controller.xds_auth import (
    REVIEW_CACHE,
    ServiceAccount,
    ServiceAccountTokens,
    token_exchange_app,
)
from grpcmesh_control.cluster.objects import OperatorSettings, mutate_pod
from grpcmesh_control.cluster.objects.names import (
    BOOTSTRAP_KEY,
    BOOTSTRAP_VOLUME,
    PROXY_CONTAINER,
)
from grpcmesh_control.cluster.objects.proxy import (
    XDS_TOKEN_VOLUME,
    bootstrap_data,
    proxy_container,
    proxy_volumes,
)
from grpcmesh_control.cluster.objects.settings import XdsCredential
from grpcmesh_control.mesh.translate.bootstrap import SUBJECT_TOKEN_TYPE_JWT, XDS_CLUSTER

from .checks import apply_review_patch
from .test_admission import INJECT, pod, review

NOW = 1_000_000.0
CATALOG = ServiceAccount("shop", "catalog")
GATEWAY = ServiceAccount("grpcmesh-system", "grpcmesh-ingress")


def jwt(exp: float | None) -> str:
    """An unsigned JWT-shaped token (only the API server's review says whether it is valid)."""
    claims: dict[str, Any] = {} if exp is None else {"exp": exp}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln"


class Reviews:
    """A stand-in for TokenReview: ``accounts`` maps token -> account; counts its calls."""

    def __init__(self, accounts: dict[str, ServiceAccount]) -> None:
        self.accounts = accounts
        self.calls = 0

    async def __call__(self, token: str) -> ServiceAccount | None:
        self.calls += 1
        return self.accounts.get(token)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def tokens(reviews: Reviews, clock: Clock) -> ServiceAccountTokens:
    services = {"catalog": CATALOG}
    return ServiceAccountTokens(reviews, services.get, gateway=GATEWAY, clock=clock)


def test_service_account_usernames() -> None:
    assert ServiceAccount.from_username("system:serviceaccount:shop:catalog") == CATALOG
    for other in ("alice", "system:serviceaccount:shop", "system:serviceaccount::x", ""):
        assert ServiceAccount.from_username(other) is None
    assert ServiceAccount.parse(str(CATALOG)) == CATALOG


async def test_a_bearer_token_is_its_account_and_the_review_is_cached() -> None:
    token = jwt(NOW + 3600)
    reviews, clock = Reviews({token: CATALOG}), Clock()
    auth = tokens(reviews, clock)
    assert await auth.authenticate({"authorization": f"Bearer {token}"}) == "shop/catalog"
    assert await auth.authenticate({"authorization": f"Bearer {token}"}) == "shop/catalog"
    assert reviews.calls == 1
    # Asked again once the cache ends (a deleted pod's token then stops working).
    clock.now += REVIEW_CACHE + 1
    reviews.accounts.clear()
    assert await auth.authenticate({"authorization": f"Bearer {token}"}) is None
    assert reviews.calls == 2


async def test_a_review_is_never_trusted_past_the_tokens_expiry() -> None:
    token = jwt(NOW + 10)
    reviews, clock = Reviews({token: CATALOG}), Clock()
    auth = tokens(reviews, clock)
    verified = await auth.verify(token)
    assert verified is not None and verified[1] == NOW + 10
    clock.now += 11
    await auth.verify(token)
    assert reviews.calls == 2


@pytest.mark.parametrize(
    "metadata",
    [{}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}, {"authorization": "x"}],
)
async def test_no_bearer_token_is_no_identity(metadata: dict[str, str]) -> None:
    reviews = Reviews({})
    assert await tokens(reviews, Clock()).authenticate(metadata) is None
    assert reviews.calls == 0


async def test_a_token_the_api_server_refuses_is_no_identity() -> None:
    assert await tokens(Reviews({}), Clock()).authenticate({"authorization": "Bearer t"}) is None


def test_an_account_may_ask_only_for_its_own_services_nodes() -> None:
    auth = tokens(Reviews({}), Clock())
    assert auth.permits("shop/catalog", "sidecar~catalog~catalog-7d9f8-abcde")
    assert not auth.permits("shop/intruder", "sidecar~catalog~catalog-7d9f8-abcde")
    assert not auth.permits("other/catalog", "sidecar~catalog~x")  # same name, other namespace
    assert not auth.permits("shop/catalog", "sidecar~orders~x")  # unknown to the registry
    assert not auth.permits("shop/catalog", "ingress~gateway~x")
    assert auth.permits(str(GATEWAY), "ingress~gateway~grpcmesh-gateway-0")
    assert not auth.permits(str(GATEWAY), "sidecar~catalog~x")
    assert not auth.permits("shop/catalog", "not a node id")


async def exchange(auth: ServiceAccountTokens, form: dict[str, str]) -> tuple[int, Any]:
    async with TestClient(TestServer(token_exchange_app(auth))) as client:
        response = await client.post("/token", data=form)
        return response.status, await response.json()


GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = SUBJECT_TOKEN_TYPE_JWT


async def test_the_exchange_hands_back_a_reviewed_token() -> None:
    token = jwt(NOW + 3600)
    auth = tokens(Reviews({token: CATALOG}), Clock())
    form = {
        "grant_type": GRANT,
        "subject_token": token,
        "subject_token_type": SUBJECT_TOKEN_TYPE_JWT,
    }
    status, body = await exchange(auth, form)
    assert status == 200
    # What gRPC's STS credentials need: access_token, token_type and a numeric expires_in.
    assert body["access_token"] == token and body["token_type"] == "Bearer"
    assert body["expires_in"] == int(REVIEW_CACHE)
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "subject_token": "t"}, "unsupported_grant_type"),
        ({"grant_type": GRANT, "subject_token": "t"}, "invalid_request"),
        ({"grant_type": GRANT, "subject_token_type": SUBJECT_TOKEN_TYPE_JWT}, "invalid_request"),
        (
            {
                "grant_type": GRANT,
                "subject_token": "t",
                "subject_token_type": SUBJECT_TOKEN_TYPE_JWT,
            },
            "invalid_grant",
        ),
    ],
)
async def test_the_exchange_refuses(form: dict[str, str], error: str) -> None:
    status, body = await exchange(tokens(Reviews({}), Clock()), form)
    assert (status, body["error"]) == (400, error)


CREDENTIAL = XdsCredential(
    root_pem="-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n",
    token_exchange_uri="http://grpcmesh-control.grpcmesh-system.svc:18001/token",
)
SECURED = OperatorSettings(xds_credential=CREDENTIAL)


def test_a_secured_sidecar_proves_its_account_over_tls() -> None:
    bootstrap = json.loads(bootstrap_data("catalog", 50051, SECURED)[BOOTSTRAP_KEY])
    (service,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    google = service["google_grpc"]
    assert google["target_uri"] == SECURED.xds_address
    ssl = google["channel_credentials"]["ssl_credentials"]
    assert ssl == {"root_certs": {"inline_string": CREDENTIAL.root_pem}}
    (call,) = google["call_credentials"]
    assert call["sts_service"] == {
        "token_exchange_service_uri": CREDENTIAL.token_exchange_uri,
        "subject_token_path": "/var/run/secrets/grpcmesh/xds/token",
        "subject_token_type": SUBJECT_TOKEN_TYPE_JWT,
        "audience": "grpcmesh",
    }
    # The static xDS cluster stays (the ingress routes server reflection there), over TLS.
    (xds,) = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER]
    context = xds["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["validation_context"]["trusted_ca"] == {"inline_string": CREDENTIAL.root_pem}
    # Off (the default): the built-in client, plaintext, and no token anywhere.
    plain = json.loads(bootstrap_data("catalog", 50051, OperatorSettings())[BOOTSTRAP_KEY])
    assert "envoy_grpc" in plain["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert [v["name"] for v in proxy_volumes("catalog", OperatorSettings())] == [BOOTSTRAP_VOLUME]


def test_only_the_envoy_container_mounts_the_projected_token() -> None:
    (volume,) = [v for v in proxy_volumes("catalog", SECURED) if v["name"] == XDS_TOKEN_VOLUME]
    (source,) = volume["projected"]["sources"]
    assert source == {
        "serviceAccountToken": {"audience": "grpcmesh", "expirationSeconds": 3600, "path": "token"}
    }
    mounts = proxy_container("catalog", SECURED)["volumeMounts"]
    assert {
        "name": XDS_TOKEN_VOLUME,
        "mountPath": "/var/run/secrets/grpcmesh/xds",
        "readOnly": True,
    } in mounts
    # An injected pod gets the same, its app containers no token.
    before = pod(INJECT)
    after = apply_review_patch(before, mutate_pod(review(before, kind="Pod"), settings=SECURED))
    assert XDS_TOKEN_VOLUME in {v["name"] for v in after["spec"]["volumes"]}
    (proxy,) = after["spec"]["initContainers"]
    assert proxy["name"] == PROXY_CONTAINER
    assert XDS_TOKEN_VOLUME in {m["name"] for m in proxy["volumeMounts"]}
    for container in after["spec"]["containers"]:
        assert XDS_TOKEN_VOLUME not in {m["name"] for m in container.get("volumeMounts", [])}


def test_xds_auth_needs_the_mesh_ca() -> None:
    with pytest.raises(ValueError, match="GRPCMESH_MESH_CA_SECRET"):
        RuntimeSettings.from_env({"GRPCMESH_XDS_AUTH": "true"})
    settings = RuntimeSettings.from_env(
        {
            "GRPCMESH_XDS_AUTH": "true",
            "GRPCMESH_MESH_CA_SECRET": "mesh-ca",
            "GRPCMESH_TOKEN_EXCHANGE_PORT": "19001",
            "GRPCMESH_GATEWAY_SERVICE_ACCOUNT": "edge",
            "GRPCMESH_XDS_ROOT_CONFIG_MAP": "xds-root",
            "GRPCMESH_XDS_SERVING_NAMES": "a.b.svc.cluster.local, c",
        }
    )
    assert settings.xds_auth and settings.token_exchange_port == 19001
    assert settings.gateway_service_account == "edge"
    assert settings.xds_root_config_map == "xds-root"
    assert settings.xds_serving_names == ("a.b.svc.cluster.local", "c")
    assert not RuntimeSettings.from_env({}).xds_auth
