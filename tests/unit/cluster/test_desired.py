"""desired_objects on the example MeshServices: which objects, and the fields that carry the
design (sidecar model, probes, config reload, bootstrap hash, ownership, determinism)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from grpcmesh_control.cluster.objects import OperatorSettings, Provider, desired_objects, object_key
from grpcmesh_control.cluster.objects.desired import SCRAPE_CONVENTIONS
from grpcmesh_control.cluster.objects.names import (
    ANNOTATION_BOOTSTRAP_HASH,
    LABEL_SERVICE,
    LABEL_VERSION,
    PROXY_CONTAINER,
)
from grpcmesh_control.cluster.objects.settings import (
    PodLocalAddress,
    TracingSettings,
    XdsCredential,
)
from grpcmesh_control.mesh.errors import InvalidResource
from grpcmesh_control.mesh.model import MeshService, MethodCatalog, parse_mesh_service
from grpcmesh_control.mesh.translate import NodeId, ProxyNode, Registry, build_snapshot
from grpcmesh_control.observability.scrape import Job, pod_monitors

from .conftest import NAMESPACE, owner_of

Obj = dict[str, Any]


def render(svc: MeshService, settings: OperatorSettings) -> list[Obj]:
    return desired_objects(svc, namespace=NAMESPACE, owner=owner_of(svc.name), settings=settings)


def by_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    return by_kind(objects, kind)[name]


def containers(deployment: Obj) -> tuple[Obj, Obj]:
    spec = deployment["spec"]["template"]["spec"]
    (proxy,) = spec["initContainers"]
    (app,) = spec["containers"]
    return proxy, app


def env_of(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_objects_of_each_example(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    rendered = {name: [(o["kind"], o["metadata"]["name"]) for o in render(svc, settings)]
                for name, svc in services.items()}  # fmt: skip
    assert rendered["payments"] == [
        ("ConfigMap", "payments-config"),
        ("ConfigMap", "payments-envoy-bootstrap"),
        ("Service", "payments"),
        ("Service", "payments-v1"),
        ("Service", "payments-v2"),
        ("ServiceAccount", "payments"),
        ("Deployment", "payments-v1"),
        ("Deployment", "payments-v2"),
        ("ServiceMonitor", "payments"),
    ]
    assert rendered["orders"] == [
        ("ConfigMap", "orders-config"),
        ("ConfigMap", "orders-envoy-bootstrap"),
        ("Service", "orders"),
        ("Service", "orders-v1"),
        ("ServiceAccount", "orders"),
        ("Deployment", "orders-v1"),
        ("ServiceMonitor", "orders"),
    ]
    # Unique identities, so apply and prune can key on them.
    for objects in map(lambda s: render(s, settings), services.values()):
        assert len({object_key(o) for o in objects}) == len(objects)


def test_each_workload_runs_under_its_own_service_account_without_a_mounted_token(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    accounts = set()
    for svc in services.values():
        objects = render(svc, settings)
        if svc.workload is None:
            assert not [o for o in objects if o["kind"] == "ServiceAccount"]
            continue
        account = one(objects, "ServiceAccount", svc.name)
        assert account["automountServiceAccountToken"] is False
        assert account["metadata"]["labels"][LABEL_SERVICE] == svc.name
        assert account["metadata"]["ownerReferences"][0]["kind"] == "MeshService"
        for deployment in [o for o in objects if o["kind"] == "Deployment"]:
            pod = deployment["spec"]["template"]["spec"]
            assert pod["serviceAccountName"] == account["metadata"]["name"]
            assert pod["automountServiceAccountToken"] is False
        accounts.add(account["metadata"]["name"])
    assert len(accounts) == len([s for s in services.values() if s.workload is not None])


def test_service_targets_the_sidecar_inbound_port(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    service = one(render(services["orders"], settings), "Service", "orders")
    grpc, metrics, health = service["spec"]["ports"]
    assert grpc == {
        "appProtocol": "grpc",
        "name": "grpc",
        "port": 50051,
        "protocol": "TCP",
        "targetPort": settings.proxy.inbound_port,
    }
    assert (metrics["name"], metrics["targetPort"]) == ("metrics", settings.app.metrics_port)
    assert (health["name"], health["targetPort"]) == ("envoy-health", settings.proxy.health_port)
    assert service["spec"]["selector"] == {LABEL_SERVICE: "orders"}
    assert LABEL_VERSION not in service["metadata"]["labels"]


def test_per_version_services_are_headless_and_labelled(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    for version in ("v1", "v2"):
        service = one(render(services["payments"], settings), "Service", f"payments-{version}")
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"] == {LABEL_SERVICE: "payments", LABEL_VERSION: version}
        # EndpointSlices copy these labels: that is how the control plane learns the version.
        assert service["metadata"]["labels"][LABEL_VERSION] == version
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] == settings.proxy.inbound_port


def test_labels(services: dict[str, MeshService], settings: OperatorSettings) -> None:
    deployment = one(render(services["payments"], settings), "Deployment", "payments-v2")
    expected = {
        "app.kubernetes.io/instance": "payments",
        "app.kubernetes.io/managed-by": "grpcmesh-operator",
        "app.kubernetes.io/name": "payments",
        "app.kubernetes.io/part-of": "grpcmesh",
        "app.kubernetes.io/version": "v2",
        "grpcmesh.io/service": "payments",
        "grpcmesh.io/version": "v2",
    }
    assert deployment["metadata"]["labels"] == expected
    assert deployment["spec"]["template"]["metadata"]["labels"] == expected
    assert deployment["spec"]["selector"] == {
        "matchLabels": {"grpcmesh.io/service": "payments", "grpcmesh.io/version": "v2"}
    }


def test_versions_get_their_image_and_replicas(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    doc = example_docs["payments"]
    doc["spec"]["replicas"] = 3
    doc["spec"]["versions"][1]["replicas"] = 1
    objects = render(parse_mesh_service(doc, catalog=catalog), settings)
    v1, v2 = (one(objects, "Deployment", f"payments-{v}") for v in ("v1", "v2"))
    assert (v1["spec"]["replicas"], v2["spec"]["replicas"]) == (3, 1)
    assert containers(v1)[1]["image"] == "ghcr.io/grpcmesh/grpcmesh-payments:0.1.0"
    assert containers(v2)[1]["image"] == "ghcr.io/grpcmesh/grpcmesh-payments:0.2.0"


def test_envoy_is_a_native_sidecar(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    proxy, _ = containers(one(render(services["orders"], settings), "Deployment", "orders-v1"))
    assert proxy["name"] == PROXY_CONTAINER
    assert proxy["restartPolicy"] == "Always"
    health = settings.proxy.health_port
    assert proxy["startupProbe"]["httpGet"] == {"path": "/ready", "port": health}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": health}
    # A control plane outage must not restart sidecars: liveness does not ask /ready.
    assert proxy["livenessProbe"] == {
        "tcpSocket": {"port": health},
        "periodSeconds": 10,
        "failureThreshold": 3,
    }
    command = proxy["command"]
    assert command[:3] == [settings.proxy.binary, "-c", "/etc/grpcmesh/envoy/envoy.json"]
    assert "--disable-hot-restart" in command


def test_node_id_comes_from_the_pod_name(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    proxy, _ = containers(one(render(services["orders"], settings), "Deployment", "orders-v1"))
    command = proxy["command"]
    node = command[command.index("--service-node") + 1]
    cluster = command[command.index("--service-cluster") + 1]
    assert node == "sidecar~orders~$(POD_NAME)"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        proxy["env"]
    )
    # What the kubelet makes of it parses as the control plane's node id.
    expanded = NodeId.parse(node.replace("$(POD_NAME)", "orders-v1-7d9f8c6b5-x2x4q"))
    assert expanded == NodeId.sidecar("orders", "orders-v1-7d9f8c6b5-x2x4q")
    assert cluster == expanded.envoy_cluster


def test_app_probes_go_through_the_sidecar(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    _, app = containers(one(render(services["orders"], settings), "Deployment", "orders-v1"))
    inbound = {"port": settings.proxy.inbound_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert app[probe]["grpc"] == inbound, probe
    # The app stays on loopback: only the sidecar (and so the probes through it) reaches it.
    assert env_of(app)["GRPCMESH_HOST"] == "127.0.0.1"
    assert env_of(app)["GRPCMESH_PORT"] == "50051"
    # Liveness outlasts a sidecar restart.
    liveness = app["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


def test_app_env(services: dict[str, MeshService], settings: OperatorSettings) -> None:
    _, app = containers(one(render(services["inventory"], settings), "Deployment", "inventory-v1"))
    env = env_of(app)
    assert env["GRPCMESH_SIDECAR_EGRESS"] == "127.0.0.1:15001"
    assert env["GRPCMESH_SIDECAR_ADMIN"] == f"127.0.0.1:{settings.proxy.admin_port}"
    assert env["GRPCMESH_CONFIG_FILE"] == "/etc/grpcmesh/config/config.yaml"
    assert env["GRPCMESH_METRICS_HOST"] == "0.0.0.0"
    assert env["GRPCMESH_METRICS_PORT"] == "9464"
    assert env["GRPCMESH_SERVICE_NAME"] == "inventory"
    assert env["GRPCMESH_LOG_LEVEL"] == "INFO"  # the workload's own
    assert app["env"][0]["name"] == "GRPCMESH_LOG_LEVEL"  # the workload's first, then ours
    # spec.config sets db_path, so no env variable overrides it (env beats the config file).
    assert "GRPCMESH_DB_PATH" not in env


def test_db_path_defaults_into_the_data_volume(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    _, app = containers(one(render(services["catalog"], settings), "Deployment", "catalog-v1"))
    assert env_of(app)["GRPCMESH_DB_PATH"] == "/var/lib/catalog/catalog.db"
    mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
    assert mounts["/var/lib/catalog"] == "data"


def test_the_workload_cannot_override_mesh_variables(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    doc = example_docs["inventory"]
    doc["spec"]["workload"]["env"].append({"name": "GRPCMESH_PORT", "value": "1"})
    svc = parse_mesh_service(doc, catalog=catalog)
    _, app = containers(one(render(svc, settings), "Deployment", "inventory-v1"))
    assert [e["value"] for e in app["env"] if e["name"] == "GRPCMESH_PORT"] == ["50051"]


def test_workers_reach_the_app_and_win_over_its_env(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    doc = example_docs["inventory"]
    _, app = containers(
        one(
            render(parse_mesh_service(doc, catalog=catalog), settings), "Deployment", "inventory-v1"
        )
    )
    assert "GRPCMESH_WORKERS" not in env_of(app)  # unset: the kit's default, one process
    doc["spec"]["workload"]["workers"] = 2
    doc["spec"]["workload"]["env"].append({"name": "GRPCMESH_WORKERS", "value": "5"})
    svc = parse_mesh_service(doc, catalog=catalog)
    _, app = containers(one(render(svc, settings), "Deployment", "inventory-v1"))
    assert [e["value"] for e in app["env"] if e["name"] == "GRPCMESH_WORKERS"][-1] == "2"


def test_secret_and_config_map_env(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    doc = example_docs["orders"]
    doc["spec"]["workload"]["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "m"}}},
    ]
    _, app = containers(
        one(render(parse_mesh_service(doc, catalog=catalog), settings), "Deployment", "orders-v1")
    )
    assert app["env"][:2] == doc["spec"]["workload"]["env"]


def test_volumes(services: dict[str, MeshService], settings: OperatorSettings) -> None:
    deployment = one(render(services["orders"], settings), "Deployment", "orders-v1")
    proxy, app = containers(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {
        "data": {"name": "data", "emptyDir": {}},
        "grpcmesh-bootstrap": {
            "name": "grpcmesh-bootstrap",
            "configMap": {"name": "orders-envoy-bootstrap"},
        },
        "grpcmesh-config": {"name": "grpcmesh-config", "configMap": {"name": "orders-config"}},
        "tmp": {"name": "tmp", "emptyDir": {}},
    }
    # A directory mount (no subPath), or ConfigMap updates never reach the running pod.
    for mount in [*app["volumeMounts"], *proxy["volumeMounts"]]:
        assert "subPath" not in mount
    mounts = {m["name"]: m for m in app["volumeMounts"]}
    assert mounts["grpcmesh-config"] == {
        "name": "grpcmesh-config",
        "mountPath": "/etc/grpcmesh/config",
        "readOnly": True,
    }
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert mounts["data"]["mountPath"] == "/var/lib/orders"  # where spec.config's db_path is


def test_resources_from_the_spec_with_defaults(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    def resources(name: str) -> Any:
        return containers(one(render(services[name], settings), "Deployment", f"{name}-v1"))[1][
            "resources"
        ]

    assert resources("catalog") == {
        "limits": {"cpu": "500m", "memory": "256Mi"},
        "requests": {"cpu": "50m", "memory": "64Mi"},
    }
    # Requests given and no limits: no default limit, which could undercut the request.
    assert resources("inventory") == {"requests": {"cpu": "50m", "memory": "64Mi"}}
    assert resources("payments") == {
        "limits": {"memory": "512Mi"},
        "requests": {"cpu": "100m", "memory": "128Mi"},
    }


def test_only_a_limit_makes_it_the_request(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    doc = example_docs["payments"]
    doc["spec"]["workload"]["resources"] = {"limits": {"memory": "64Mi", "cpu": 1}}
    deployment = one(
        render(parse_mesh_service(doc, catalog=catalog), settings), "Deployment", "payments-v1"
    )
    assert containers(deployment)[1]["resources"] == {
        "limits": {"cpu": "1", "memory": "64Mi"},
        "requests": {"cpu": "1", "memory": "64Mi"},
    }


def test_config_map_holds_spec_config(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    svc = parse_mesh_service(example_docs["catalog"], catalog=catalog)
    config = one(render(svc, settings), "ConfigMap", "catalog-config")
    assert yaml.safe_load(config["data"]["config.yaml"]) == {"cache_ttl_seconds": "30"}
    del example_docs["catalog"]["spec"]["config"]
    empty = parse_mesh_service(example_docs["catalog"], catalog=catalog)
    # Still a file the kit can read (and later reload when config appears).
    assert one(render(empty, settings), "ConfigMap", "catalog-config")["data"] == {
        "config.yaml": "{}\n"
    }


def test_bootstrap_config_map(services: dict[str, MeshService], settings: OperatorSettings) -> None:
    bootstrap_cm = one(render(services["orders"], settings), "ConfigMap", "orders-envoy-bootstrap")
    bootstrap = json.loads(bootstrap_cm["data"]["envoy.json"])
    assert bootstrap["node"]["cluster"] == "orders"
    node = ProxyNode.from_node(bootstrap["node"]["id"], bootstrap["node"]["metadata"])
    assert (node.app_port, node.inbound_port, node.egress_port) == (50051, 15006, 15001)
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == ("127.0.0.1", settings.proxy.admin_port)
    (health,) = bootstrap["static_resources"]["listeners"]
    assert health["address"]["socket_address"]["port_value"] == settings.proxy.health_port
    xds = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "xds_cluster")
    xds_host = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert xds_host["socket_address"]["address"] == settings.xds_address.rpartition(":")[0]


def _templates(objects: list[Obj]) -> dict[str, Obj]:
    return {n: d["spec"]["template"] for n, d in by_kind(objects, "Deployment").items()}


def test_bootstrap_change_rolls_pods_but_config_change_does_not(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    svc = parse_mesh_service(example_docs["payments"], catalog=catalog)
    before = render(svc, settings)
    hashes = {
        n: t["metadata"]["annotations"][ANNOTATION_BOOTSTRAP_HASH]
        for n, t in _templates(before).items()
    }
    assert len(set(hashes.values())) == 1  # one bootstrap per service

    moved = render(svc, dataclasses.replace(settings, xds_address="cp.elsewhere.svc:18000"))
    assert one(moved, "ConfigMap", "payments-envoy-bootstrap") != one(
        before, "ConfigMap", "payments-envoy-bootstrap"
    )
    for name, template in _templates(moved).items():
        assert template["metadata"]["annotations"][ANNOTATION_BOOTSTRAP_HASH] != hashes[name]

    example_docs["payments"]["spec"]["config"]["failure_rate"] = "0.5"
    reconfigured = render(parse_mesh_service(example_docs["payments"], catalog=catalog), settings)
    assert one(reconfigured, "ConfigMap", "payments-config") != one(
        before, "ConfigMap", "payments-config"
    )
    # The app config reloads live: the pod templates (and so the pods) stay as they are.
    assert by_kind(reconfigured, "Deployment") == by_kind(before, "Deployment")


def test_every_object_is_owned_by_the_mesh_service(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    for svc in services.values():
        for obj in render(svc, settings):
            assert obj["metadata"]["namespace"] == NAMESPACE
            assert obj["metadata"]["ownerReferences"] == [
                {
                    "apiVersion": "grpcmesh.io/v1alpha1",
                    "blockOwnerDeletion": True,
                    "controller": True,
                    "kind": "MeshService",
                    "name": svc.name,
                    "uid": owner_of(svc.name).uid,
                }
            ]


def test_output_is_deterministic_and_unshared(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    first = render(services["payments"], settings)
    snapshot = copy.deepcopy(first)
    # Editing one result must not leak into the next (no shared sub-dicts or cached objects).
    containers(one(first, "Deployment", "payments-v1"))[1]["readinessProbe"]["grpc"]["port"] = 1
    one(first, "Service", "payments")["spec"]["ports"].clear()
    second = render(services["payments"], settings)
    assert second == snapshot
    assert json.dumps(second) == json.dumps(snapshot)


def test_without_a_workload_no_deployment(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    del example_docs["orders"]["spec"]["workload"]
    objects = render(parse_mesh_service(example_docs["orders"], catalog=catalog), settings)
    assert by_kind(objects, "Deployment") == {}
    # Injected pods mount the bootstrap ConfigMap, so it is still rendered.
    assert "orders-envoy-bootstrap" in by_kind(objects, "ConfigMap")
    assert "orders" in by_kind(objects, "Service")


def test_service_monitor_only_with_its_crd(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    without = dataclasses.replace(settings, service_monitor_crd=False)
    assert by_kind(render(services["orders"], without), "ServiceMonitor") == {}
    objects = render(services["orders"], settings)
    monitor = one(objects, "ServiceMonitor", "orders")
    spec = monitor["spec"]
    assert [(e["path"], e["port"]) for e in spec["endpoints"]] == [
        ("/metrics", "metrics"),
        ("/stats/prometheus", "envoy-health"),
    ]
    # The same labels as the PodMonitors give (the dashboards and alerts rely on them) ...
    monitors = {m["metadata"]["name"]: m for m in pod_monitors(conventions=SCRAPE_CONVENTIONS)}
    for endpoint, job in zip(spec["endpoints"], (Job.APP, Job.ENVOY), strict=True):
        (wanted,) = monitors[job.value]["spec"]["podMetricsEndpoints"]
        assert endpoint["relabelings"] == wanted["relabelings"]
        assert endpoint["port"] == wanted["port"]
    # ... read from labels the pods carry.
    pod_labels = one(objects, "Deployment", "orders-v1")["spec"]["template"]["metadata"]["labels"]
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k) for k in pod_labels}
    sources = {
        source
        for endpoint in spec["endpoints"]
        for relabeling in endpoint["relabelings"]
        for source in relabeling.get("sourceLabels", [])
        if source.startswith("__meta_kubernetes_pod_label_")
    }
    # (the component label only marks gateways: a mesh pod without it is a sidecar's)
    component = "__meta_kubernetes_pod_label_app_kubernetes_io_component"
    assert sources - {component} and sources - {component} <= meta
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # It selects the main Service and not the per-version ones (no pod scraped twice) ...
    selected = [s for s in by_kind(objects, "Service").values() if _selects(spec["selector"], s)]
    assert [s["metadata"]["name"] for s in selected] == ["orders"]
    # ... whose port names the endpoints refer to.
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert {e["port"] for e in spec["endpoints"]} <= port_names


def _selects(selector: Mapping[str, Any], obj: Obj) -> bool:
    labels = obj["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "DoesNotExist"
        if expression["key"] in labels:
            return False
    return True


@pytest.mark.parametrize("port", [15000, 15001, 15006, 15021, 9464])
def test_reserved_ports_are_refused(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings, port: int
) -> None:
    example_docs["orders"]["spec"]["grpc"]["port"] = port
    svc = parse_mesh_service(example_docs["orders"], catalog=catalog)
    with pytest.raises(InvalidResource) as caught:
        render(svc, settings)
    assert [e.path for e in caught.value.errors] == ["spec.grpc.port"]
    assert "reserved" in str(caught.value)


def test_long_names_stay_valid_and_distinct(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    doc = example_docs["payments"]
    doc["metadata"]["name"] = "p" * 60
    doc["spec"]["versions"] = [
        {"name": "canary-" + "a" * 50, "weight": 50},
        {"name": "canary-" + "b" * 50, "weight": 50},
    ]
    objects = render(parse_mesh_service(doc, catalog=catalog), settings)
    names = [o["metadata"]["name"] for o in objects if o["kind"] in ("Service", "Deployment")]
    assert all(len(n) <= 63 for n in names)
    assert len(set(names)) == len(names) - 2  # a version's Service and Deployment share a name


def test_appmesh_provider_drops_the_native_sidecar(
    services: dict[str, MeshService], appmesh_settings: OperatorSettings
) -> None:
    objects = render(services["payments"], appmesh_settings)
    assert "payments-envoy-bootstrap" not in by_kind(objects, "ConfigMap")
    deployment = one(objects, "Deployment", "payments-v1")
    template = deployment["spec"]["template"]
    assert "initContainers" not in template["spec"]
    assert ANNOTATION_BOOTSTRAP_HASH not in template["metadata"]["annotations"]
    (app,) = template["spec"]["containers"]
    assert app["readinessProbe"]["grpc"] == {"port": 50051}
    assert "GRPCMESH_SIDECAR_EGRESS" not in env_of(app)
    service = one(objects, "Service", "payments")
    assert service["spec"]["ports"][0]["targetPort"] == 50051
    assert [p["name"] for p in service["spec"]["ports"]] == ["grpc", "metrics"]
    kinds = {o["kind"] for o in objects}
    assert {"Mesh", "VirtualNode", "VirtualRouter", "VirtualService"} <= kinds
    assert appmesh_settings.provider is Provider.APPMESH


def test_each_version_runs_its_own_image_command_and_env(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    doc = example_docs["payments"]
    doc["spec"]["workload"]["env"] = [
        {"name": "GRPCMESH_LOG_LEVEL", "value": "INFO"},
        {"name": "REGION", "value": "eu"},
    ]
    doc["spec"]["versions"][1] |= {
        "command": ["python", "-m", "grpcmesh_payments_next"],
        "args": ["--fast"],
        "env": [{"name": "GRPCMESH_LOG_LEVEL", "value": "DEBUG"}],
    }
    objects = render(parse_mesh_service(doc, catalog=catalog), settings)
    _, stable = containers(one(objects, "Deployment", "payments-v1"))
    _, canary = containers(one(objects, "Deployment", "payments-v2"))
    assert stable["image"].endswith(":0.1.0") and canary["image"].endswith(":0.2.0")
    assert stable["command"] == ["python", "-m", "grpcmesh_payments"]
    assert "args" not in stable
    assert (canary["command"], canary["args"]) == (
        ["python", "-m", "grpcmesh_payments_next"],
        ["--fast"],
    )
    assert env_of(stable)["GRPCMESH_LOG_LEVEL"] == "INFO"
    assert env_of(canary)["GRPCMESH_LOG_LEVEL"] == "DEBUG"
    assert env_of(canary)["REGION"] == env_of(stable)["REGION"] == "eu"


def test_every_app_is_told_its_version(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    objects = render(services["payments"], settings)
    for version in ("v1", "v2"):
        _, app = containers(one(objects, "Deployment", f"payments-{version}"))
        assert env_of(app)["GRPCMESH_VERSION"] == version


def test_a_proxyless_services_app_gets_an_xds_bootstrap_naming_its_pod(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    doc = example_docs["orders"]
    doc["spec"]["proxyless"] = True
    svc = parse_mesh_service(doc, catalog=catalog)
    _, app = containers(one(render(svc, settings), "Deployment", "orders-v1"))
    names = [e["name"] for e in app["env"]]
    # $(POD_NAME) expands only from a variable defined before it.
    assert names.index("POD_NAME") < names.index("GRPCMESH_XDS_BOOTSTRAP")
    env = env_of(app)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    bootstrap = json.loads(env["GRPCMESH_XDS_BOOTSTRAP"])
    assert bootstrap["node"]["id"] == "proxyless~orders~$(POD_NAME)"
    assert bootstrap["xds_servers"][0]["server_uri"] == settings.xds_address
    expanded = bootstrap["node"]["id"].replace("$(POD_NAME)", "orders-v1-7d9f8-abcde")
    node = ProxyNode.from_node(expanded, bootstrap["node"]["metadata"])
    assert (node.id, node.egress_port) == (
        NodeId.proxyless("orders", "orders-v1-7d9f8-abcde"),
        settings.proxy.egress_port,
    )
    assert env["GRPCMESH_SIDECAR_EGRESS"] == "127.0.0.1:15001"  # the sidecar stays
    plain = parse_mesh_service(example_docs["inventory"], catalog=catalog)
    _, other = containers(one(render(plain, settings), "Deployment", "inventory-v1"))
    assert "GRPCMESH_XDS_BOOTSTRAP" not in env_of(other) and "POD_NAME" not in env_of(other)


def test_a_proxyless_app_proves_its_account_when_xds_auth_is_on(
    example_docs: dict[str, Any], catalog: MethodCatalog, settings: OperatorSettings
) -> None:
    root = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n"
    secured = dataclasses.replace(
        settings,
        xds_credential=XdsCredential(root_pem=root, token_exchange_uri="https://x:18001/token"),
    )
    doc = example_docs["orders"]
    doc["spec"]["proxyless"] = True
    doc["spec"]["workload"].setdefault("env", []).append(
        {"name": "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS", "value": "false"}
    )
    svc = parse_mesh_service(doc, catalog=catalog)
    objects = render(svc, secured)
    deployment = one(objects, "Deployment", "orders-v1")
    proxy, app = containers(deployment)
    # The bootstrap: TLS to the control plane, the projected token on every ADS call.
    env = env_of(app)
    (server,) = json.loads(env["GRPCMESH_XDS_BOOTSTRAP"])["xds_servers"]
    directory = "/var/run/secrets/grpcmesh/proxyless-xds"
    assert server["channel_creds"] == [
        {"type": "tls", "config": {"ca_certificate_file": f"{directory}/ca.pem"}}
    ]
    assert server["call_creds"] == [
        {"type": "jwt_token_file", "config": {"jwt_token_file": f"{directory}/token"}}
    ]
    # gRPC reads call_creds only behind this gate; the workload cannot turn it off.
    gates = [e for e in app["env"] if e["name"] == "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"]
    assert gates == [{"name": "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS", "value": "true"}]
    # The app's own volume (not Envoy's): a grpcmesh-audience token and the root, read-only.
    assert {"name": "proxyless-xds", "mountPath": directory, "readOnly": True} in app[
        "volumeMounts"
    ]
    assert "proxyless-xds" not in {m["name"] for m in proxy["volumeMounts"]}
    assert "xds-token" not in {m["name"] for m in app["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    token, ca = volumes["proxyless-xds"]["projected"]["sources"]
    assert token == {
        "serviceAccountToken": {"audience": "grpcmesh", "expirationSeconds": 3600, "path": "token"}
    }
    bootstrap_map = one(objects, "ConfigMap", "orders-envoy-bootstrap")
    assert ca == {
        "configMap": {
            "name": "orders-envoy-bootstrap",
            "items": [{"key": "xds-root.pem", "path": "ca.pem"}],
        }
    }
    assert bootstrap_map["data"]["xds-root.pem"] == root
    # Off: plaintext, no token, no gate, no volume.
    _, plain_app = containers(one(render(svc, settings), "Deployment", "orders-v1"))
    (plain,) = json.loads(env_of(plain_app)["GRPCMESH_XDS_BOOTSTRAP"])["xds_servers"]
    assert plain["channel_creds"] == [{"type": "insecure"}] and "call_creds" not in plain
    assert "proxyless-xds" not in {m["name"] for m in plain_app["volumeMounts"]}
    assert env_of(plain_app)["GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"] == "false"
    sidecar = parse_mesh_service(example_docs["inventory"], catalog=catalog)
    sidecar_objects = render(sidecar, secured)
    sidecar_volumes = one(sidecar_objects, "Deployment", "inventory-v1")["spec"]["template"]
    assert "proxyless-xds" not in {v["name"] for v in sidecar_volumes["spec"]["volumes"]}


def test_proxyless_needs_the_native_provider(
    example_docs: dict[str, Any], catalog: MethodCatalog, appmesh_settings: OperatorSettings
) -> None:
    doc = example_docs["orders"]
    doc["spec"]["proxyless"] = True
    svc = parse_mesh_service(doc, catalog=catalog)
    with pytest.raises(InvalidResource) as caught:
        render(svc, appmesh_settings)
    assert "spec.proxyless" in [e.path for e in caught.value.errors]


def test_tracing_reaches_every_sidecar_and_app(
    services: dict[str, MeshService], settings: OperatorSettings
) -> None:
    """The mesh's collector and ratio go into the sidecar's node metadata (so its snapshot
    traces to the collector at that ratio) and the app's kit variables, as in local mode."""
    endpoint = "otel-collector.observability.svc:4317"
    traced = dataclasses.replace(
        settings, tracing=TracingSettings(otlp_endpoint=endpoint, sampling=0.25)
    )
    objects = render(services["orders"], traced)
    _, app = containers(one(objects, "Deployment", "orders-v1"))
    env = env_of(app)
    assert env["GRPCMESH_OTLP_ENDPOINT"] == endpoint
    assert float(env["GRPCMESH_TRACE_SAMPLING_RATIO"]) == 0.25

    bootstrap = json.loads(
        one(objects, "ConfigMap", "orders-envoy-bootstrap")["data"]["envoy.json"]
    )
    node = ProxyNode.from_node("sidecar~orders~orders-v1-abc", bootstrap["node"]["metadata"])
    assert (node.otlp_collector, node.trace_sampling) == (endpoint, 0.25)
    snapshot = build_snapshot(Registry.build(services.values()), node)
    assert "otlp_collector" in {c.name for c in snapshot.clusters}
    inbound = next(item for item in snapshot.listeners if item.name == "inbound")
    manager = hcm_pb2.HttpConnectionManager()
    inbound.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.tracing.random_sampling.value == 25.0

    # A new collector or ratio is a new bootstrap: the pods roll, as Envoy reads it once.
    untraced = render(services["orders"], settings)
    assert (
        _templates(objects)["orders-v1"]["metadata"]["annotations"][ANNOTATION_BOOTSTRAP_HASH]
        != _templates(untraced)["orders-v1"]["metadata"]["annotations"][ANNOTATION_BOOTSTRAP_HASH]
    )
    _, untraced_app = containers(one(untraced, "Deployment", "orders-v1"))
    assert "GRPCMESH_OTLP_ENDPOINT" not in env_of(untraced_app)

    # With per-pod addresses the node metadata comes from --config-yaml, which carries it too.
    on_pod_ip = dataclasses.replace(traced, pod_local_address=PodLocalAddress.POD_IP)
    proxy, _ = containers(one(render(services["orders"], on_pod_ip), "Deployment", "orders-v1"))
    overlay = json.loads(proxy["command"][proxy["command"].index("--config-yaml") + 1])
    node = ProxyNode.from_node("sidecar~orders~orders-v1-abc", overlay["node"]["metadata"])
    assert (node.otlp_collector, node.trace_sampling) == (endpoint, 0.25)
