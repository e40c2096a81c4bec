"""xDS authentication in a cluster, the pure parts: who a token is (TokenReview stubbed, its
answers cached no longer than the token lives), which nodes an account may ask for, the
RFC 8693 token exchange (and its TLS on loopback), and what a sidecar gets rendered when it
is on. The real API server and real Envoys: tests/cluster/test_xds_auth.py."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509

from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.controller.xds_auth import (
    REVIEW_CACHE,
    ServiceAccount,
    ServiceAccountTokens,
    ServingCertificate,
    TokenExchangeServer,
    serving_names,
    token_exchange_app,
)
from grpcmesh_control.cluster.objects import OperatorSettings, mutate_pod
from grpcmesh_control.cluster.objects.names import (
    BOOTSTRAP_KEY,
    BOOTSTRAP_VOLUME,
    PROXY_CONTAINER,
)
from grpcmesh_control.cluster.objects.proxy import (
    DEFAULT_ROOTS_VARIABLE,
    XDS_ROOT_KEY,
    XDS_TOKEN_VOLUME,
    bootstrap_data,
    proxy_container,
    proxy_volumes,
)
from grpcmesh_control.cluster.objects.settings import XdsCredential
from grpcmesh_control.mesh.ca import CertificateAuthority
from grpcmesh_control.mesh.translate.bootstrap import SUBJECT_TOKEN_TYPE_JWT, XDS_CLUSTER
from tests.loopback import LOCALHOST

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
    token_exchange_uri="https://grpcmesh-control.grpcmesh-system.svc:18001/token",
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


def test_every_envoy_trusts_the_mesh_root_for_the_exchange() -> None:
    """gRPC's STS credentials verify an https exchange against the default roots file only:
    the Envoy container names the mesh root, a file of its mounted bootstrap ConfigMap."""
    data = bootstrap_data("catalog", 50051, SECURED)
    assert data[XDS_ROOT_KEY] == CREDENTIAL.root_pem
    container = proxy_container("catalog", SECURED)
    (variable,) = [e for e in container["env"] if e["name"] == DEFAULT_ROOTS_VARIABLE]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == BOOTSTRAP_VOLUME]
    assert variable["value"] == f"{mount['mountPath']}/{XDS_ROOT_KEY}"
    (volume,) = [v for v in proxy_volumes("catalog", SECURED) if v["name"] == BOOTSTRAP_VOLUME]
    assert "items" not in volume["configMap"]  # every key of the ConfigMap, the root too
    # An injected pod's sidecar is the same container.
    before = pod(INJECT)
    after = apply_review_patch(before, mutate_pod(review(before, kind="Pod"), settings=SECURED))
    (proxy,) = after["spec"]["initContainers"]
    assert variable in proxy["env"]
    # Off: no root, and gRPC's default roots are left alone.
    assert XDS_ROOT_KEY not in bootstrap_data("catalog", 50051, OperatorSettings())
    plain = proxy_container("catalog", OperatorSettings())
    assert DEFAULT_ROOTS_VARIABLE not in {e["name"] for e in plain["env"]}


CA_NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def serving_pair(ca: CertificateAuthority) -> tuple[bytes, bytes]:
    issued = ca.issue_serving([LOCALHOST], CA_NOW, validity=dt.timedelta(days=3650))
    return issued.key_pem(), issued.cert_chain_pem()


@asynccontextmanager
async def tls_exchange(
    serving: ServingCertificate, reviews: Reviews | None = None
) -> AsyncIterator[int]:
    """The exchange as the operator serves it, on loopback; its port."""
    server = TokenExchangeServer(tokens(reviews or Reviews({}), Clock()), serving)
    try:
        yield await server.start(LOCALHOST, 0)
    finally:
        await server.close()


def trusting(ca: CertificateAuthority) -> ssl.SSLContext:
    root = ca.pem()[2].decode()
    return ssl.create_default_context(cadata=root)


async def presented(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """The certificate the exchange presents to a new connection (verified by ``context``)."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(LOCALHOST, port, ssl=context), 10)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return x509.load_der_x509_certificate(der)


async def test_the_exchange_speaks_tls_only_with_the_xds_certificate() -> None:
    ca = CertificateAuthority.create_root(CA_NOW)
    pair = serving_pair(ca)
    serving = ServingCertificate(pair)
    assert serving() == pair  # what the ADS server presents
    form = {"grant_type": GRANT, "subject_token": "t", "subject_token_type": JWT_TYPE}
    async with tls_exchange(serving) as port, aiohttp.ClientSession() as session:
        # Verified against the mesh root, the IP SAN matching the URI's host: it answers.
        url = f"https://{LOCALHOST}:{port}/token"
        async with session.post(url, data=form, ssl=trusting(ca)) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "invalid_grant"
        # Without the mesh root (the public roots): no handshake, so no token sent.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.post(url, data=form, ssl=ssl.create_default_context())
        # Plain HTTP: the server never answers it (no status line, the connection ends).
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        writer.write(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            answer = b""
        writer.close()
        assert not answer.startswith(b"HTTP/"), answer


async def test_the_exchange_follows_a_replaced_xds_certificate() -> None:
    ca = CertificateAuthority.create_root(CA_NOW)
    first, second = serving_pair(ca), serving_pair(ca)
    serving = ServingCertificate(first)
    async with tls_exchange(serving) as port:
        before = await presented(port, trusting(ca))
        assert before == x509.load_pem_x509_certificate(first[1])
        serving.replace(second)
        assert serving() == second  # the ADS server's next handshake
        after = await presented(port, trusting(ca))
        assert after == x509.load_pem_x509_certificate(second[1])
        # A new CA entirely (a root rotation): clients trusting only the old root refuse it.
        other = CertificateAuthority.create_root(CA_NOW)
        serving.replace(serving_pair(other))
        assert await presented(port, trusting(other)) != after
        with pytest.raises(ssl.SSLCertVerificationError):
            await presented(port, trusting(ca))


def test_the_xds_certificate_names_the_exchanges_authority() -> None:
    """gRPC's HTTP client checks the exchange's certificate against ``host:port`` (the URI's
    authority), its channels against the host: the certificate names both."""
    host = "grpcmesh-control.grpcmesh-system.svc"
    names = serving_names(host, ["grpcmesh-control", host], 18001)
    assert names == [host, "grpcmesh-control", f"{host}:18001"]
    assert serving_names("::1", [], 18001) == ["::1", "[::1]:18001"]
    assert serving_names(LOCALHOST, [], None) == [LOCALHOST]  # port not known yet
    ca = CertificateAuthority.create_root(CA_NOW)
    issued = ca.issue_serving(names, CA_NOW, validity=dt.timedelta(days=1))
    cert = x509.load_pem_x509_certificate(issued.cert_chain_pem())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == names


async def post_as_grpc_does(port: int, context: ssl.SSLContext, body: bytes) -> bytes:
    """A POST the way gRPC's HTTP client makes it (the STS credentials'): ``Connection:
    close``, then read until the connection ends, never sending a TLS close_notify (a
    close_notify from the server is not the end for it)."""
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=LOCALHOST)

    async def receive() -> bool:
        data = await reader.read(65536)
        incoming.write(data)
        return bool(data)

    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                assert await receive(), "the exchange ended the handshake"
        head = f"POST /token HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\nConnection: close\r\n"
        head += "Content-Type: application/x-www-form-urlencoded\r\n"
        tls.write(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        writer.write(outgoing.read())
        answer = b""
        while await receive():  # until the TCP connection ends
            while True:
                try:
                    chunk = tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                if not chunk:  # after the server's close_notify
                    break
                answer += chunk
        return answer
    finally:
        writer.close()


async def test_the_exchange_ends_the_connection_for_a_grpc_client() -> None:
    """gRPC's STS fetch completes only when the connection ends: the exchange ends it right
    after its answer rather than waiting (asyncio's default: 30 s) for a close_notify."""
    ca = CertificateAuthority.create_root(CA_NOW)
    token = jwt(NOW + 3600)
    body = f"grant_type={GRANT}&subject_token={token}&subject_token_type={JWT_TYPE}".encode()
    async with tls_exchange(
        ServingCertificate(serving_pair(ca)), Reviews({token: CATALOG})
    ) as port:
        started = time.monotonic()
        answer = await asyncio.wait_for(post_as_grpc_does(port, trusting(ca), body), 20)
        took = time.monotonic() - started
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(payload)["access_token"] == token
    assert took < 5, f"the connection ended only after {took:.1f}s"
