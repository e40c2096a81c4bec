"""``pod_local_address``: where a pod's containers meet. Loopback (the default) renders exactly
as before; the pod IP (for nodes whose pods share the host's network, like the cluster tier's
node agent) moves the app, the sidecar's egress/admin/health listeners and the inbound cluster
onto ``$(POD_IP)``, and stays consistent once the kubelet has expanded it."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from grpcmesh_control.cluster.objects import OperatorSettings, desired_objects, mutate_pod
from grpcmesh_control.cluster.objects.names import INJECT_VALUE, LABEL_INJECT, LABEL_SERVICE
from grpcmesh_control.cluster.objects.settings import PodLocalAddress
from grpcmesh_control.mesh.model import Endpoint, MeshService
from grpcmesh_control.mesh.translate import NodeId, ProxyNode, Registry, build_snapshot
from grpcmesh_control.mesh.translate.naming import LOCALHOST

from .conftest import NAMESPACE, owner_of

Obj = dict[str, Any]
POD_IP = "127.2.0.7"  # what the kubelet substitutes for $(POD_IP) in this test


def pod_ip_settings(settings: OperatorSettings) -> OperatorSettings:
    return dataclasses.replace(settings, pod_local_address=PodLocalAddress.POD_IP)


def rendered(svc: MeshService, settings: OperatorSettings) -> tuple[Obj, Obj, Obj]:
    """(bootstrap ConfigMap document, proxy container, app container) of ``svc``'s v1."""
    objects = desired_objects(svc, namespace=NAMESPACE, owner=owner_of(svc.name), settings=settings)
    config_map = next(o for o in objects if o["metadata"]["name"] == f"{svc.name}-envoy-bootstrap")
    deployment = next(
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{svc.name}-v1"
    )
    spec = deployment["spec"]["template"]["spec"]
    (proxy,), (app,) = spec["initContainers"], spec["containers"]
    return json.loads(config_map["data"]["envoy.json"]), proxy, app


def env_values(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def kubelet_expand(text: str) -> str:
    return text.replace("$(POD_IP)", POD_IP)


def test_loopback_is_the_default_and_renders_no_pod_ip(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    assert settings.pod_local_address is PodLocalAddress.LOOPBACK
    _, proxy, app = rendered(services["orders"], settings)
    assert "--config-yaml" not in proxy["command"]
    assert "POD_IP" not in env_values(proxy) | env_values(app)


def test_the_app_listens_and_dials_on_the_pod_ip(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    _, _, app = rendered(services["orders"], pod_ip_settings(settings))
    # Defined first: the kubelet expands $(POD_IP) only from variables defined before.
    assert app["env"][0] == {
        "name": "POD_IP",
        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
    }
    env = env_values(app)
    assert env["GRPCMESH_HOST"] == "$(POD_IP)"
    assert env["GRPCMESH_METRICS_HOST"] == "$(POD_IP)"
    assert env["GRPCMESH_SIDECAR_EGRESS"] == "$(POD_IP):15001"
    assert env["GRPCMESH_SIDECAR_ADMIN"] == f"$(POD_IP):{settings.proxy.admin_port}"


def merged_bootstrap(services: dict[str, MeshService], settings: OperatorSettings) -> Obj:
    """What Envoy runs with: the ConfigMap's file with ``--config-yaml`` merged over it (as
    Envoy merges them: protobuf MergeFrom), after the kubelet expanded $(POD_IP)."""
    document, proxy, _ = rendered(services["orders"], pod_ip_settings(settings))
    command = proxy["command"]
    overlay = json.loads(kubelet_expand(command[command.index("--config-yaml") + 1]))
    bootstrap = json_format.ParseDict(document, bootstrap_pb2.Bootstrap())
    bootstrap.MergeFrom(json_format.ParseDict(overlay, bootstrap_pb2.Bootstrap()))
    return json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)


def test_the_sidecar_gets_its_pod_addresses_on_the_command_line(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    document, proxy, _ = rendered(services["orders"], pod_ip_settings(settings))
    assert env_values(proxy)["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # Whole numbers: Envoy reads --config-yaml as YAML and would keep 15006.0 in the node
    # metadata as the string "15006.0", which the control plane refuses as a port.
    overlay = proxy["command"][proxy["command"].index("--config-yaml") + 1]
    assert '"inbound_port":15006' in overlay and "15006.0" not in overlay
    # The shared file leaves out what the overlay adds (a merge appends repeated fields).
    assert "listeners" not in document["static_resources"]
    assert [c["name"] for c in document["static_resources"]["clusters"]] == ["xds_cluster"]

    merged = merged_bootstrap(services, settings)
    admin = merged["admin"]["address"]["socket_address"]
    assert admin == {"address": POD_IP, "port_value": settings.proxy.admin_port}
    (health,) = merged["static_resources"]["listeners"]
    assert health["address"]["socket_address"] == {
        "address": POD_IP,
        "port_value": settings.proxy.health_port,
    }
    clusters = {c["name"]: c for c in merged["static_resources"]["clusters"]}
    assert set(clusters) == {"xds_cluster", "admin"}
    admin_endpoint = clusters["admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert admin_endpoint["endpoint"]["address"]["socket_address"]["address"] == POD_IP
    assert merged["node"]["cluster"] == "orders"


def test_xds_binds_the_sidecar_to_its_pod_ip(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    merged = merged_bootstrap(services, settings)
    node = ProxyNode.from_node("sidecar~orders~orders-v1-abc", merged["node"]["metadata"])
    assert (node.local_address, node.bind_address) == (POD_IP, POD_IP)
    assert node.app_port is None  # spec.grpc.port, as with the loopback bootstrap

    registry = Registry.build(
        services.values(), endpoints={"payments": [Endpoint("127.2.0.9", 15006, "v1")]}
    )
    snapshot = build_snapshot(registry, node)
    listeners = {item.name: item for item in snapshot.listeners}
    assert listeners["egress"].address.socket_address.address == POD_IP
    assert listeners["inbound"].address.socket_address.address == POD_IP
    (inbound,) = [c for c in snapshot.clusters if c.name.startswith("inbound|")]
    app = inbound.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (app.address, app.port_value) == (POD_IP, services["orders"].grpc.port)


def test_loopback_nodes_keep_loopback(services: dict[str, MeshService]) -> None:
    node = ProxyNode(NodeId.sidecar("orders", "0"))
    assert "local_address" not in node.metadata()["grpcmesh"]
    assert ProxyNode.from_node("sidecar~orders~0", node.metadata()).local_address == LOCALHOST
    snapshot = build_snapshot(Registry.build(services.values()), node)
    egress = next(item for item in snapshot.listeners if item.name == "egress")
    assert egress.address.socket_address.address == LOCALHOST


def test_injection_defines_the_pod_ip_before_the_sidecar_variables(
    settings: OperatorSettings,
) -> None:
    pod = {
        "metadata": {
            "name": "web",
            "labels": {LABEL_INJECT: INJECT_VALUE, LABEL_SERVICE: "orders"},
        },
        "spec": {
            "containers": [{"name": "app", "image": "x", "env": [{"name": "A", "value": "1"}]}]
        },
    }
    review = {
        "request": {"uid": "1", "object": pod, "operation": "CREATE", "kind": {"kind": "Pod"}}
    }
    response = mutate_pod(review, settings=pod_ip_settings(settings))["response"]
    patch = json.loads(base64.b64decode(response["patch"]))
    added = [op["value"]["name"] for op in patch if op["path"] == "/spec/containers/0/env/-"]
    assert added == ["POD_IP", "GRPCMESH_SIDECAR_ADMIN", "GRPCMESH_SIDECAR_EGRESS"]
