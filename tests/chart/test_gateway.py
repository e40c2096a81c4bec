"""The ingress gateway: its bootstrap is exactly what the operator's ``render_bootstrap`` makes
for an ingress node pointed at the chart's xDS Service, its command is ``envoy_command``'s with
the per-pod node id, and the real Envoy accepts the bootstrap."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpcmesh_control.cluster.controller.operator import XDS_ROOT_KEY as PUBLISHED_ROOT_KEY
from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.objects.proxy import (
    BOOTSTRAP_REPLICA,
    DEFAULT_ROOTS_VARIABLE,
    XDS_TOKEN_AUDIENCE,
    XDS_TOKEN_DIR,
    XDS_TOKEN_FILE,
)
from grpcmesh_control.cluster.objects.settings import PodLocalAddress, ProxySettings
from grpcmesh_control.mesh.ca import CertificateAuthority
from grpcmesh_control.mesh.model.identity import INGRESS_SERVICE_ACCOUNT
from grpcmesh_control.mesh.translate.bootstrap import (
    XdsTokenExchange,
    envoy_command,
    render_bootstrap,
    render_local_overlay,
)
from grpcmesh_control.mesh.translate.naming import (
    DEFAULT_INGRESS_PORT,
    NodeId,
    NodeKind,
    ProxyNode,
)

from .chart import NAMESPACE, RELEASE, REPO, Obj, env_of, find, load_yaml, one, render

ENVOY = Path(sys.executable).parent / "envoy"
PROXY = ProxySettings()
CONFIG_DIR = "/etc/grpcmesh/envoy"


POD_IP = "$(POD_IP)"
GATEWAY_NODE = NodeId.ingress("gateway", BOOTSTRAP_REPLICA)


XDS_ROOT = "/etc/grpcmesh/xds-root/ca.crt"  # the operator's ConfigMap, mounted


def expected_bootstrap(
    xds_address: str, *, health: bool = True, auth: bool = True, exchange_port: int = 18001
) -> Obj:
    """What the operator renders for the gateway node; with ``auth`` (the default), the ADS
    stream proves the gateway's account as a sidecar's does, trusting the mounted root."""
    node = ProxyNode(id=GATEWAY_NODE)
    host = xds_address.rpartition(":")[0]
    exchange = XdsTokenExchange(
        token_exchange_uri=f"https://{host}:{exchange_port}/token",
        subject_token_path=f"{XDS_TOKEN_DIR}/{XDS_TOKEN_FILE}",
        audience=XDS_TOKEN_AUDIENCE,
        trusted_ca_file=XDS_ROOT,
    )
    return render_bootstrap(
        str(node.id),
        node.id.envoy_cluster,
        xds_address,
        PROXY.admin_port,
        node_metadata=node.metadata(),
        health_port=PROXY.health_port if health else None,
        xds_token_exchange=exchange if auth else None,
    )


def config_yaml(container: Obj) -> Obj | None:
    """The ``--config-yaml`` overlay of the gateway's command, if any."""
    command: list[str] = container["command"]
    if "--config-yaml" not in command:
        return None
    overlay: Obj = json.loads(command[command.index("--config-yaml") + 1])
    return overlay


def gateway(objects: list[Obj], fullname: str) -> tuple[Obj, Obj]:
    config_map = one(objects, "ConfigMap", f"{fullname}-gateway-bootstrap")
    deployment = one(objects, "Deployment", f"{fullname}-gateway")
    return json.loads(config_map["data"]["envoy.json"]), deployment


def operator_xds_address(objects: list[Obj], fullname: str) -> str:
    deployment = one(objects, "Deployment", f"{fullname}-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    address: str = env_of(container)["GRPCMESH_XDS_ADDRESS"]
    return address


@pytest.mark.parametrize(
    ("release", "namespace", "values", "fullname"),
    [
        (RELEASE, NAMESPACE, {}, RELEASE),
        ("shop", "mesh", {"operator": {"ports": {"xds": 19000}}}, "shop-grpcmesh"),
        (RELEASE, NAMESPACE, {"operator": {"xdsAuthentication": False}}, RELEASE),
    ],
    ids=["defaults", "renamed", "no-xds-auth"],
)
def test_bootstrap_is_the_operators(
    release: str, namespace: str, values: Obj, fullname: str
) -> None:
    objects = render(values, release=release, namespace=namespace)
    bootstrap, _ = gateway(objects, fullname)
    xds_address = operator_xds_address(objects, fullname)
    port = values.get("operator", {}).get("ports", {}).get("xds", 18000)
    assert xds_address == f"{fullname}-control.{namespace}.svc:{port}"
    auth = values.get("operator", {}).get("xdsAuthentication", True)
    assert bootstrap == expected_bootstrap(xds_address, auth=auth)
    # The port metadata the control plane reads back: the ingress listener on 8080.
    node = ProxyNode.from_node(bootstrap["node"]["id"], bootstrap["node"]["metadata"])
    assert (node.id.kind, node.ingress_port) == (NodeKind.INGRESS, DEFAULT_INGRESS_PORT)


def test_command_and_pod() -> None:
    objects = render({})
    _, deployment = gateway(objects, RELEASE)
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    expected = envoy_command(
        f"{CONFIG_DIR}/envoy.json", envoy=PROXY.binary, concurrency=2, log_level="info"
    )
    node_id = "ingress~gateway~$(POD_NAME)"
    assert container["command"] == [
        *expected,
        "--service-node",
        node_id,
        "--service-cluster",
        "ingress",
    ]
    assert env_of(container)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # What the control plane sees once the kubelet expands $(POD_NAME).
    parsed = NodeId.parse(node_id.replace("$(POD_NAME)", "grpcmesh-gateway-7d9f8-abcde"))
    assert (parsed.kind, parsed.name, parsed.envoy_cluster) == (
        NodeKind.INGRESS,
        "gateway",
        "ingress",
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": DEFAULT_INGRESS_PORT, "envoy-health": PROXY.health_port}
    assert container["image"] == "docker.io/envoyproxy/envoy-distroless:v1.40.0"
    assert container["securityContext"]["runAsUser"] == PROXY.uid
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "envoy-health"}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == CONFIG_DIR]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == f"{RELEASE}-gateway-bootstrap"
    assert pod["metadata"]["annotations"]["checksum/bootstrap"]
    # Its own ServiceAccount, the one authorization rules call the ingress; no token.
    assert pod["spec"]["serviceAccountName"] == INGRESS_SERVICE_ACCOUNT
    account = one(objects, "ServiceAccount", INGRESS_SERVICE_ACCOUNT)
    assert account["automountServiceAccountToken"] is False
    assert pod["spec"]["automountServiceAccountToken"] is False
    service = one(objects, "Service", f"{RELEASE}-gateway")
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "grpc")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


@pytest.mark.parametrize("auth", [True, False], ids=["xds-auth", "no-xds-auth"])
def test_the_gateway_trusts_the_mesh_root_for_the_token_exchange(auth: bool) -> None:
    """gRPC's STS credentials verify the HTTPS exchange against the default roots only: the
    gateway's Envoy names the mesh root the operator publishes, as a mounted file."""
    objects = render({"operator": {"xdsAuthentication": auth}})
    _, deployment = gateway(objects, RELEASE)
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = env_of(container)
    if not auth:
        assert DEFAULT_ROOTS_VARIABLE not in env
        return
    assert env[DEFAULT_ROOTS_VARIABLE] == XDS_ROOT
    directory, _, key = XDS_ROOT.rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == f"{RELEASE}-xds-root"
    operator = one(objects, "Deployment", f"{RELEASE}-operator")
    (operator_container,) = operator["spec"]["template"]["spec"]["containers"]
    assert env_of(operator_container)["GRPCMESH_XDS_ROOT_CONFIG_MAP"] == f"{RELEASE}-xds-root"
    assert key == PUBLISHED_ROOT_KEY  # the key the operator writes


def test_pod_ip_local_address_puts_the_gateways_listeners_on_the_pod_ip() -> None:
    """For nodes whose pods share the host network: the file leaves out the health listener
    and its admin cluster, and --config-yaml puts them, the admin and the node metadata on
    $(POD_IP), exactly as the operator does for sidecars. The operator is told too."""
    objects = render({"podLocalAddress": "pod-ip"})
    bootstrap, deployment = gateway(objects, RELEASE)
    assert bootstrap == expected_bootstrap(operator_xds_address(objects, RELEASE), health=False)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    on_pod_ip = ProxyNode(id=GATEWAY_NODE, bind_address=POD_IP, local_address=POD_IP)
    assert config_yaml(container) == render_local_overlay(
        PROXY.admin_port,
        local_address=POD_IP,
        node_metadata=on_pod_ip.metadata(),
        health_port=PROXY.health_port,
    )
    assert env_of(container)["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    operator = one(objects, "Deployment", f"{RELEASE}-operator")
    (operator_container,) = operator["spec"]["template"]["spec"]["containers"]
    env = {k: v for k, v in env_of(operator_container).items() if isinstance(v, str)}
    assert RuntimeSettings.from_env(env).render.pod_local_address is PodLocalAddress.POD_IP

    # The default (every real cluster) renders none of it.
    defaults = render({})
    _, deployment = gateway(defaults, RELEASE)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert config_yaml(container) is None and "POD_IP" not in env_of(container)
    operator = one(defaults, "Deployment", f"{RELEASE}-operator")
    assert "GRPCMESH_POD_LOCAL_ADDRESS" not in env_of(
        operator["spec"]["template"]["spec"]["containers"][0]
    )


def test_bootstrap_change_rolls_the_pods() -> None:
    def checksum(values: Obj) -> str:
        _, deployment = gateway(render(values), RELEASE)
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/bootstrap"]
        return value

    assert checksum({}) != checksum({"operator": {"ports": {"xds": 19000}}})


def test_disabled() -> None:
    objects = render({"gateway": {"enabled": False}})
    assert [o for o in objects if "gateway" in o["metadata"]["name"]] == []
    assert find(objects, "Deployment", f"{RELEASE}-operator")


@pytest.mark.slow
@pytest.mark.parametrize("local_address", ["loopback", "pod-ip"])
def test_envoy_accepts_the_bootstrap(tmp_path: Path, local_address: str) -> None:
    bootstrap, deployment = gateway(render({"podLocalAddress": local_address}), RELEASE)
    # The mesh root where the pod mounts the operator's ConfigMap (Envoy reads it at start).
    root = tmp_path / "ca.crt"
    root.write_bytes(CertificateAuthority.create_root(dt.datetime.now(dt.UTC)).pem()[2])
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(bootstrap).replace(XDS_ROOT, str(root)))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    overlay = config_yaml(container)
    # What the kubelet would expand $(POD_IP) to.
    merged = ["--config-yaml", json.dumps(overlay).replace(POD_IP, "127.0.0.1")] if overlay else []
    result = subprocess.run(
        [
            str(ENVOY),
            "--mode",
            "validate",
            "-c",
            str(config),
            *merged,
            "--disable-hot-restart",
            "--service-node",
            "ingress~gateway~grpcmesh-gateway-0",
            "--service-cluster",
            "ingress",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_tracing_reaches_the_gateway_and_the_operator() -> None:
    """``tracing.*`` goes into the gateway's node metadata exactly as ``ProxyNode`` writes it
    (so its HCM traces to the collector at the mesh's ratio), in the file and in the pod-ip
    overlay, and into the operator's settings, which render the same for every sidecar."""
    endpoint = "otel-collector.observability.svc:4317"
    values = {"tracing": {"otlpEndpoint": endpoint, "samplingRatio": 0.25}}
    objects = render(values)
    bootstrap, _ = gateway(objects, RELEASE)
    traced = ProxyNode(id=GATEWAY_NODE, otlp_collector=endpoint, trace_sampling=0.25)
    expected = expected_bootstrap(operator_xds_address(objects, RELEASE))
    expected["node"]["metadata"] = traced.metadata()
    assert bootstrap == expected
    node = ProxyNode.from_node(bootstrap["node"]["id"], bootstrap["node"]["metadata"])
    assert (node.otlp_collector, node.trace_sampling) == (endpoint, 0.25)

    operator = one(objects, "Deployment", f"{RELEASE}-operator")
    (operator_container,) = operator["spec"]["template"]["spec"]["containers"]
    env = {k: v for k, v in env_of(operator_container).items() if isinstance(v, str)}
    tracing = RuntimeSettings.from_env(env).render.tracing
    assert (tracing.otlp_endpoint, tracing.sampling) == (endpoint, 0.25)

    _, deployment = gateway(render({**values, "podLocalAddress": "pod-ip"}), RELEASE)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    overlay = config_yaml(container)
    assert overlay is not None
    on_pod_ip = ProxyNode.from_node(str(GATEWAY_NODE), overlay["node"]["metadata"])
    assert (on_pod_ip.otlp_collector, on_pod_ip.trace_sampling) == (endpoint, 0.25)

    # Off by default: no collector anywhere, the default ratio left implicit.
    bootstrap, _ = gateway(render({}), RELEASE)
    assert "otlp_collector" not in bootstrap["node"]["metadata"]["grpcmesh"]


GATEWAY_TLS = {"gateway": {"tls": {"secretName": "grpcmesh-gateway-tls"}}}


def test_gateway_tls_is_off_by_default() -> None:
    objects = render({})
    operator = one(objects, "Deployment", f"{RELEASE}-operator")
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert "GRPCMESH_GATEWAY_TLS_SECRET" not in env_of(container)
    assert not [r for r in find(objects, "Role") if r["metadata"]["name"].endswith("gateway-tls")]
    (port,) = one(objects, "Service", f"{RELEASE}-gateway")["spec"]["ports"]
    assert port["appProtocol"] == "kubernetes.io/h2c"


@pytest.mark.parametrize("require_client", [False, True])
def test_gateway_tls_names_the_secret_to_the_operator_and_lets_it_read_only_that(
    require_client: bool,
) -> None:
    tls = {"secretName": "grpcmesh-gateway-tls", "requireClientCertificate": require_client}
    objects = render({"gateway": {"tls": tls}})
    operator = one(objects, "Deployment", f"{RELEASE}-operator")
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    settings = RuntimeSettings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert settings.gateway_tls_secret == "grpcmesh-gateway-tls"
    assert settings.gateway_client_certificates is require_client
    # Least privilege: get, on that one Secret, in the release namespace; as manifests/rbac.
    role = one(objects, "Role", f"{RELEASE}-operator-gateway-tls")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["grpcmesh-gateway-tls"],
            "verbs": ["get"],
        }
    ]
    manifest = {
        (d["kind"], d["metadata"]["name"]): d
        for d in load_yaml(REPO / "manifests" / "rbac" / "operator-gateway-tls.yaml")
    }
    assert role["rules"] == manifest["Role", role["metadata"]["name"]]["rules"]
    binding = one(objects, "RoleBinding", f"{RELEASE}-operator-gateway-tls")
    assert binding["subjects"] == manifest["RoleBinding", binding["metadata"]["name"]]["subjects"]
    assert binding["roleRef"] == manifest["RoleBinding", binding["metadata"]["name"]]["roleRef"]
    # Nothing reaches the gateway pods but xDS: no Secret volume, the same bootstrap.
    _, deployment = gateway(objects, RELEASE)
    pod = deployment["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert gateway(objects, RELEASE)[0] == gateway(render({}), RELEASE)[0]
    (port,) = one(objects, "Service", f"{RELEASE}-gateway")["spec"]["ports"]
    assert "appProtocol" not in port  # not h2c any more


def test_gateway_tls_values_are_checked_by_the_schema() -> None:
    from .test_chart import lint_errors

    assert lint_errors({"gateway": {"tls": {"secretName": "Not_A_Name"}}})
    assert lint_errors({"gateway": {"tls": {"secret": "x"}}})
    assert lint_errors(GATEWAY_TLS) == []
