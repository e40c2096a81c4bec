"""xDS authentication in a cluster, on the real API server: the operator (a local process, run
from this checkout, ``GRPCMESH_XDS_AUTH``) serves ADS over TLS with a mesh-CA certificate and
only to an Envoy proving its ServiceAccount with a projected token, each only the nodes of the
MeshService that runs under that account.

- The catalog's pod really runs on the node agent (process runner): its Envoy sidecar has the
  projected token the agent got from the TokenRequest API (audience ``grpcmesh``), exchanges
  it at the operator's token endpoint (gRPC's STS credentials, over HTTPS verified against
  the mesh root its ConfigMap mounts as gRPC's default roots) and gets its config, so the pod
  goes Ready through its proxy.
- The exchange speaks TLS only: plain HTTP gets no answer, and a client without the mesh root
  cannot complete the handshake (so never sends its token).
- A real Envoy with the operator's own catalog bootstrap but ANOTHER ServiceAccount's token
  (``kubectl create token --audience grpcmesh``) is refused with PERMISSION_DENIED, counted as
  ``wrong_node``, and gets no listener.
- A client without a token, or with a token for the API server's audience, is
  UNAUTHENTICATED; the token endpoint refuses the latter too.
- A proxyless orders pod (``spec.proxyless``): its app, a small grpcio xDS client started by the
  node agent with the rendered bootstrap, env gate and projected token, is served as
  ``proxyless~orders~<pod>`` and ACKs its routes to catalog; the same client and bootstrap
  with another account's token is refused (``wrong_node``).

The xDS address is an IP here: Envoy's gRPC client resolves names with the system resolver,
which does not know the agent's DNS table (``docs/node-agent.md``).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from grpcmesh_control.cluster.objects.names import (
    BOOTSTRAP_KEY,
    BOOTSTRAP_VOLUME,
    bootstrap_config_map_name,
)
from grpcmesh_control.mesh.translate.bootstrap import SUBJECT_TOKEN_TYPE_JWT, envoy_command
from grpcmesh_control.mesh.xds import CLUSTER
from tests.cluster.conftest import StartAgent
from tests.cluster.kube import KubeCluster, wait_until
from tests.cluster.operator_process import stop_process
from tests.cluster.test_meshed_pods import descriptors
from tests.integration.test_xds_auth_envoy import _ads, _request
from tests.loopback import LOCALHOST, free_port
from tests.scrape import fetch, value
from tests.shared import REPO, tool

# The proxyless app: one call on xds:///catalog (resolving it subscribes the ADS stream), then
# wait until stopped, so the stream stays up while the test looks at the control plane.
PROXYLESS_CLIENT = """
import os, signal, grpc
os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = os.environ["GRPCMESH_XDS_BOOTSTRAP"]
channel = grpc.insecure_channel("xds:///catalog")
try:
    channel.unary_unary("/grpcmesh.shop.v1.CatalogService/ListProducts")(b"", timeout=5)
except grpc.RpcError as exc:
    print(exc.code().name, exc.details(), flush=True)
signal.pause()
"""
XDS_GATE = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"
ADMIN_PORT = 15000  # the sidecar's admin, on its pod IP (pod-ip mode)
REFUSALS = "grpcmesh_xds_refusals_total"
DEFAULT_ROOTS = "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"


@dataclass
class RunningOperator:
    xds: str
    metrics: str
    token_exchange: str
    log: Path

    def refusals(self, reason: str) -> float:
        return value(fetch(self.metrics), REFUSALS, reason=reason)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.metrics}/status", timeout=5) as response:
            document: dict[str, Any] = json.load(response)
        return document


@pytest.fixture
def operator(kube: KubeCluster, namespace: str, tmp_path: Path) -> Iterator[RunningOperator]:
    """``grpcmesh operator`` with xDS authentication, its CA Secret in the test's namespace."""
    xds_port, metrics_port, exchange_port = free_port(), free_port(), free_port()
    log = tmp_path / "operator.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [tool("grpcmesh"), "operator"],
            env={
                **os.environ,
                "KUBECONFIG": str(kube.kubeconfig),
                "GRPCMESH_NAMESPACE": namespace,
                "GRPCMESH_MESH_CA_SECRET": "mesh-ca",
                "GRPCMESH_XDS_AUTH": "true",
                "GRPCMESH_POD_LOCAL_ADDRESS": "pod-ip",
                "GRPCMESH_XDS_ADDRESS": f"{LOCALHOST}:{xds_port}",
                "GRPCMESH_XDS_HOST": LOCALHOST,
                "GRPCMESH_XDS_PORT": str(xds_port),
                "GRPCMESH_TOKEN_EXCHANGE_PORT": str(exchange_port),
                "GRPCMESH_METRICS_HOST": LOCALHOST,
                "GRPCMESH_METRICS_PORT": str(metrics_port),
                "GRPCMESH_LIVENESS": "",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield RunningOperator(
                xds=f"{LOCALHOST}:{xds_port}",
                metrics=f"{LOCALHOST}:{metrics_port}",
                token_exchange=f"https://{LOCALHOST}:{exchange_port}/token",
                log=log,
            )
        finally:
            stop_process(process)


def ready_pod(kube: KubeCluster, namespace: str) -> dict[str, Any] | None:
    for pod in kube.items("pods", namespace, "grpcmesh.io/service=catalog"):
        conditions = pod.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return dict(pod)
    return None


def admin(address: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
        text: str = response.read().decode()
    return text


def stat(address: str, name: str) -> int | None:
    for line in admin(address, f"/stats?filter=^{name}$").splitlines():
        key, _, number = line.partition(": ")
        if key == name:
            return int(number)
    return None


def exchange(url: str, token: str, context: ssl.SSLContext) -> tuple[int, dict[str, Any]]:
    form = urllib.parse.urlencode(
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token,
            "subject_token_type": SUBJECT_TOKEN_TYPE_JWT,
        }
    ).encode()
    try:
        with urllib.request.urlopen(url, data=form, timeout=10, context=context) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def plain_http_answer(url: str) -> int | None:
    """The status the exchange's port gives a plain HTTP request (None: no HTTP answer)."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname is not None
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request("POST", parsed.path, body=b"grant_type=x")
        return connection.getresponse().status
    except (http.client.HTTPException, OSError):
        return None
    finally:
        connection.close()


def test_only_the_services_own_account_gets_its_config(
    kube: KubeCluster,
    namespace: str,
    start_node_agent: StartAgent,
    operator: RunningOperator,
    tmp_path: Path,
) -> None:
    start_node_agent("process")
    catalog = yaml.safe_load((REPO / "manifests" / "examples" / "catalog.yaml").read_text())
    catalog["spec"]["replicas"] = 1
    kube.apply([descriptors(), catalog, proxyless_orders()], namespace=namespace)
    try:
        refused = serve_only_its_own_account(kube, namespace, operator, tmp_path)
        serve_the_proxyless_app_its_own_routes(kube, namespace, operator, tmp_path, refused)
    finally:
        # Gone before the namespace is: another module's cluster-wide operator would see it.
        kube.kubectl("delete", "meshservice", "catalog", "orders", "-n", namespace, timeout=60)


def proxyless_orders() -> dict[str, Any]:
    """Orders, proxyless, calling catalog only; its app is ``PROXYLESS_CLIENT``."""
    orders = yaml.safe_load((REPO / "manifests" / "examples" / "orders.yaml").read_text())
    spec = orders["spec"]
    spec |= {"proxyless": True, "replicas": 1, "expose": False, "backends": [{"name": "catalog"}]}
    spec["workload"]["command"] = ["python", "-c", PROXYLESS_CLIENT]
    return dict(orders)


def acked_node(operator: RunningOperator, node_id: str) -> dict[str, Any] | None:
    nodes = {n["id"]: n for n in operator.status()["nodes"]}
    node: dict[str, Any] | None = nodes.get(node_id)
    if node is None or not node["connected"] or node["acked_version"] is None:
        return None
    return node if node["acked_version"] == node["snapshot_version"] else None


def serve_the_proxyless_app_its_own_routes(
    kube: KubeCluster, namespace: str, operator: RunningOperator, tmp_path: Path, refused: float
) -> None:
    """``refused``: the ``wrong_node`` refusals so far (the intruding Envoy's)."""

    # 4. The proxyless app, with the token, root and gate the operator rendered: served.
    def orders_pod() -> dict[str, Any] | None:
        pods = kube.items("pods", namespace, "grpcmesh.io/service=orders")
        return dict(pods[0]) if pods and pods[0].get("status", {}).get("podIP") else None

    pod = wait_until(orders_pod, "the orders pod started", timeout=60)
    node_id = f"proxyless~orders~{pod['metadata']['name']}"
    wait_until(lambda: acked_node(operator, node_id), f"{node_id} to ACK", timeout=60)
    assert operator.refusals("wrong_node") == refused  # the pod's own stream: none added
    assert operator.refusals("unauthenticated") == 2
    (app,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env[XDS_GATE] == "true"
    (server,) = json.loads(env["GRPCMESH_XDS_BOOTSTRAP"])["xds_servers"]
    assert [c["type"] for c in server["call_creds"]] == ["jwt_token_file"]

    # 5. The same client and bootstrap with another account's token: refused.
    directory = "/var/run/secrets/grpcmesh/proxyless-xds"
    root = kube.get("configmap", bootstrap_config_map_name("orders"), namespace)
    (tmp_path / "ca.pem").write_text(root["data"]["xds-root.pem"])
    intruder = kube.token("intruder", namespace, duration="10m", audience="grpcmesh")
    (tmp_path / "intruder-token").write_text(intruder)
    bootstrap = (
        env["GRPCMESH_XDS_BOOTSTRAP"]
        .replace("$(POD_NAME)", "intruder")
        .replace("$(POD_IP)", LOCALHOST)
        .replace(f"{directory}/ca.pem", str(tmp_path / "ca.pem"))
        .replace(f"{directory}/token", str(tmp_path / "intruder-token"))
    )
    client_env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    client_env |= {"GRPCMESH_XDS_BOOTSTRAP": bootstrap, XDS_GATE: "true"}
    with (tmp_path / "intruder.log").open("w") as out:
        client = subprocess.Popen(
            [sys.executable, "-c", PROXYLESS_CLIENT], env=client_env, stdout=out, stderr=out
        )
        try:
            wait_until(
                lambda: operator.refusals("wrong_node") > refused or None,
                "the operator to refuse the proxyless intruder",
                timeout=30,
            )
        finally:
            client.terminate()
            client.wait(timeout=10)
    assert "proxyless~orders~intruder" not in {n["id"] for n in operator.status()["nodes"]}
    assert acked_node(operator, node_id) is not None  # the pod's own stream is unaffected


def serve_only_its_own_account(
    kube: KubeCluster, namespace: str, operator: RunningOperator, tmp_path: Path
) -> float:
    """Returns the ``wrong_node`` refusals it caused: at least two, one more when Envoy's
    next retry comes before it is stopped (CI saw three)."""

    # 1. The sidecar with its own account's projected token: config over TLS, pod Ready.
    pod = wait_until(lambda: ready_pod(kube, namespace), "the catalog pod Ready", timeout=90)
    assert pod["spec"]["serviceAccountName"] == "catalog"
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "xds-token"]
    (source,) = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "grpcmesh"
    (sidecar,) = pod["spec"]["initContainers"]
    assert "xds-token" in {m["name"] for m in sidecar["volumeMounts"]}
    # gRPC verifies the HTTPS exchange against its default roots: the mounted mesh root.
    roots = {e["name"]: e.get("value") for e in sidecar["env"]}[DEFAULT_ROOTS]
    (mount,) = [m for m in sidecar["volumeMounts"] if roots.startswith(m["mountPath"] + "/")]
    assert mount["name"] == BOOTSTRAP_VOLUME
    (app,) = pod["spec"]["containers"]
    assert "xds-token" not in {m["name"] for m in app.get("volumeMounts", [])}
    sidecar_admin = f"{pod['status']['podIP']}:{ADMIN_PORT}"
    assert stat(sidecar_admin, "control_plane.connected_state") == 1
    nodes = {n["id"]: n for n in operator.status()["nodes"]}
    node = nodes[f"sidecar~catalog~{pod['metadata']['name']}"]
    assert node["connected"] and node["acked_version"] == node["snapshot_version"]
    assert operator.refusals("wrong_node") == 0
    assert operator.refusals("unauthenticated") == 0

    # 2. A real Envoy with the catalog's bootstrap and another account's token: refused.
    kube.kubectl("create", "serviceaccount", "intruder", "-n", namespace)
    intruder = kube.token("intruder", namespace, duration="10m", audience="grpcmesh")
    token_file = tmp_path / "token"
    token_file.write_text(intruder)
    config_map = kube.get("configmap", bootstrap_config_map_name("catalog"), namespace)
    bootstrap = json.loads(config_map["data"][BOOTSTRAP_KEY])
    (service,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    sts = service["google_grpc"]["call_credentials"][0]["sts_service"]
    assert sts["token_exchange_service_uri"] == operator.token_exchange  # https
    sts["subject_token_path"] = str(token_file)
    root_file = tmp_path / "xds-root.pem"
    root_file.write_text(config_map["data"]["xds-root.pem"])
    (tmp_path / "envoy.json").write_text(json.dumps(bootstrap))
    admin_port = free_port()
    overlay = {
        "admin": {"address": {"socket_address": {"address": LOCALHOST, "port_value": admin_port}}}
    }
    command = envoy_command(tmp_path / "envoy.json", envoy=tool("envoy"), log_level="info")
    command += ["--service-node", "sidecar~catalog~intruder", "--config-yaml", json.dumps(overlay)]
    with (tmp_path / "envoy.log").open("w") as envoy_log:
        # As in its pod: gRPC's default roots are the mesh root (the exchange is HTTPS).
        env = {**os.environ, DEFAULT_ROOTS: str(root_file)}
        envoy = subprocess.Popen(command, stdout=envoy_log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(
                lambda: operator.refusals("wrong_node") >= 2 or None,
                "the operator to refuse the intruder (twice: Envoy retries)",
                timeout=30,
            )
            assert stat(f"{LOCALHOST}:{admin_port}", "control_plane.connected_state") == 0
            assert json.loads(admin(f"{LOCALHOST}:{admin_port}", "/listeners?format=json")) in (
                {},
                {"listener_statuses": []},
            )
        finally:
            envoy.terminate()
            envoy.wait(timeout=10)
    assert "closed: 7" in (tmp_path / "envoy.log").read_text()  # PERMISSION_DENIED
    assert "sidecar~catalog~intruder" not in {n["id"] for n in operator.status()["nodes"]}
    # The intruder's token is a valid one for the mesh: the exchange grants it (the stream
    # check is what ties it to its own services).
    mesh_root = ssl.create_default_context(cafile=root_file)
    code, answer = exchange(operator.token_exchange, intruder, mesh_root)
    assert code == 200 and answer["access_token"] == intruder and answer["expires_in"] > 0
    # TLS only: plain HTTP gets no answer; without the mesh root no handshake, no token sent.
    assert plain_http_answer(operator.token_exchange) is None
    with pytest.raises(urllib.error.URLError) as refused:
        exchange(operator.token_exchange, intruder, ssl.create_default_context())
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError), refused.value

    # 3. No token, or one for the API server's audience: UNAUTHENTICATED, nothing sent.
    root = service["google_grpc"]["channel_credentials"]["ssl_credentials"]["root_certs"]
    root_pem = root["inline_string"].encode()
    api_token = kube.token("catalog", namespace, duration="10m")
    for metadata in (None, {"authorization": f"Bearer {api_token}"}):
        received, error = asyncio.run(
            _ads(operator.xds, root_pem, [_request("sidecar~catalog~x", CLUSTER)], metadata)
        )
        assert error is not None and error.code() is grpc.StatusCode.UNAUTHENTICATED, error
        assert received == []
    assert operator.refusals("unauthenticated") == 2
    code, answer = exchange(operator.token_exchange, api_token, mesh_root)
    assert code == 400 and answer["error"] == "invalid_grant"
    return operator.refusals("wrong_node")
