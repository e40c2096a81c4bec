"""The local plan: which processes, with which commands, environment, ports and bootstraps."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpcmesh_control.local.gateway_tls import GatewayTlsFiles
from grpcmesh_control.local.plan import (
    PORTS_PER_REPLICA,
    LocalSettings,
    Plan,
    PlanError,
    build_plan,
    new_replicas,
    ports_needed,
    ports_of,
    replan,
)
from grpcmesh_control.mesh.model import MeshService
from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_kit.tracing import DEFAULT_SAMPLING_RATIO
from tests.unit.local.conftest import FIRST_PORT, parse

PAYMENTS = """
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {name: payments}
spec:
  grpc: {port: 50051, services: [grpcmesh.shop.v1.PaymentService]}
  replicas: 2
  workload:
    image: payments:1
    command: [python3, -m, grpcmesh_payments]
    args: [--verbose]
    env:
      - {name: GRPCMESH_LOG_LEVEL, value: DEBUG}
      - {name: GRPCMESH_PORT, value: "1"}
  versions:
    - {name: v1, weight: 100}
    - {name: v2, weight: 0, replicas: 1}
  config:
    failure_rate: "0.5"
    latency_ms: "20"
"""


def _metadata(bootstrap: Any) -> dict[str, Any]:
    return dict(bootstrap["node"]["metadata"])


def test_every_replica_of_every_version_gets_an_app_and_a_sidecar(plan: Plan) -> None:
    replicas = Counter((r.service, r.version) for r in plan.replicas)
    assert replicas == {
        ("catalog", "v1"): 2,
        ("inventory", "v1"): 1,
        ("orders", "v1"): 2,
        ("payments", "v1"): 1,
        ("payments", "v2"): 1,
    }
    assert [r.node_id for r in plan.replicas if r.service == "orders"] == [
        "sidecar~orders~v1-0",
        "sidecar~orders~v1-1",
    ]
    assert plan.ingress.node_id == "ingress~gateway"
    assert plan.node_ids[-1] == "ingress~gateway"
    assert len(plan.node_ids) == len(set(plan.node_ids)) == 8


def test_node_ids_follow_the_naming_conventions(plan: Plan) -> None:
    for r in plan.replicas:
        assert NodeId.parse(r.node_id) == NodeId.sidecar(r.service, r.replica)
    assert NodeId.parse(plan.ingress.node_id) == NodeId.ingress("gateway")


def test_ports_are_distinct_and_exactly_as_many_as_announced(
    examples: tuple[MeshService, ...], plan: Plan
) -> None:
    ports = [plan.control_plane.xds_port, plan.control_plane.admin_port]
    ports += [plan.ingress.port, plan.ingress.admin_port]
    for r in plan.replicas:
        ports += [r.app_port, r.metrics_port, r.inbound_port, r.egress_port, r.admin_port]
    assert len(set(ports)) == len(ports) == ports_needed(examples)
    assert sorted(ports) == list(range(FIRST_PORT, FIRST_PORT + len(ports)))


def test_sidecar_bootstrap_carries_the_ports_in_node_metadata(plan: Plan) -> None:
    r = plan.replica("payments/v2-0")
    bootstrap = r.bootstrap
    node = ProxyNode.from_node(r.node_id, _metadata(bootstrap))
    assert node == ProxyNode(
        id=NodeId.sidecar("payments", "v2-0"),
        inbound_port=r.inbound_port,
        egress_port=r.egress_port,
        app_port=r.app_port,
        bind_address="127.0.0.1",
        access_log=True,  # local mode's Envoys log each request into their envoy.log
    )
    assert bootstrap["node"]["cluster"] == "payments"
    # The admin interface is a unix socket only its owner may use; the TCP admin port serves
    # the read-only paths, through the admin cluster that dials that socket.
    assert bootstrap["admin"]["address"] == {
        "pipe": {"path": str(r.dir / "admin.sock"), "mode": 0o600}
    }
    (health,) = bootstrap["static_resources"]["listeners"]
    assert health["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": r.admin_port,
    }
    hcm = health["filter_chains"][0]["filters"][0]["typed_config"]
    paths = [route["match"]["path"] for route in hcm["route_config"]["virtual_hosts"][0]["routes"]]
    assert paths == ["/ready", "/stats/prometheus", "/stats"]
    admin = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "admin")
    endpoint = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["pipe"]["path"] == str(r.dir / "admin.sock")
    xds = bootstrap["static_resources"]["clusters"][0]
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["port_value"] == plan.control_plane.xds_port


def test_ingress_bootstrap_listens_on_loopback(plan: Plan) -> None:
    node = ProxyNode.from_node(plan.ingress.node_id, _metadata(plan.ingress.bootstrap))
    assert (node.ingress_port, node.bind_address) == (plan.ingress.port, "127.0.0.1")
    assert plan.ingress.bootstrap["node"]["cluster"] == "ingress"


def test_app_command_runs_on_the_launchers_python(plan: Plan) -> None:
    r = plan.replica("orders/v1-1")
    assert r.app.argv == ("/venv/bin/python", "-m", "grpcmesh_orders")
    assert r.app.log == r.dir / "app.log"
    assert r.sidecar.log == r.dir / "envoy.log"
    assert r.dir == plan.run_dir / "orders" / "v1-1"


def test_app_environment_wires_the_app_to_its_sidecar(plan: Plan) -> None:
    r = plan.replica("catalog/v1-1")
    env = r.app.env
    assert env["GRPCMESH_SERVICE_NAME"] == "catalog"
    assert env["GRPCMESH_HOST"] == "127.0.0.1"
    assert env["GRPCMESH_PORT"] == str(r.app_port)
    assert env["GRPCMESH_METRICS_PORT"] == str(r.metrics_port)
    assert env["GRPCMESH_CONFIG_FILE"] == str(r.config_path)
    assert env["GRPCMESH_SIDECAR_EGRESS"] == f"127.0.0.1:{r.egress_port}"
    assert env["GRPCMESH_SIDECAR_ADMIN"] == f"127.0.0.1:{r.admin_port}"
    assert float(env["GRPCMESH_DRAIN_SECONDS"]) < 3
    # Replicas of a service share one database, like one database server in a cluster.
    other = plan.replica("catalog/v1-0")
    assert env["GRPCMESH_DB_PATH"] == other.app.env["GRPCMESH_DB_PATH"]
    assert env["GRPCMESH_DB_PATH"] == str(plan.run_dir / "catalog" / "data.db")


def test_workload_env_is_passed_but_cannot_move_the_mesh_settings(
    settings: LocalSettings,
) -> None:
    plan = build_plan(parse(PAYMENTS), itertools.count(FIRST_PORT), settings)
    r = plan.replica("payments/v1-0")
    assert r.app.env["GRPCMESH_LOG_LEVEL"] == "DEBUG"
    assert r.app.env["GRPCMESH_PORT"] == str(r.app_port)
    assert r.app.argv == ("/venv/bin/python", "-m", "grpcmesh_payments", "--verbose")


def test_workers_reach_every_replica_of_every_version(settings: LocalSettings) -> None:
    plan = build_plan(parse(PAYMENTS), itertools.count(FIRST_PORT), settings)
    assert all("GRPCMESH_WORKERS" not in r.app.env for r in plan.replicas)
    two = PAYMENTS.replace("    image: payments:1\n", "    image: payments:1\n    workers: 2\n")
    plan = build_plan(parse(two), itertools.count(FIRST_PORT), settings)
    assert [r.app.env["GRPCMESH_WORKERS"] for r in plan.replicas] == ["2", "2", "2"]


def test_version_replicas_override_and_weight_zero_versions_still_run(
    settings: LocalSettings,
) -> None:
    plan = build_plan(parse(PAYMENTS), itertools.count(FIRST_PORT), settings)
    assert [r.replica for r in plan.replicas] == ["v1-0", "v1-1", "v2-0"]


def test_config_file_is_spec_config(settings: LocalSettings) -> None:
    plan = build_plan(parse(PAYMENTS), itertools.count(FIRST_PORT), settings)
    r = plan.replica("payments/v2-0")
    assert r.config_text == "failure_rate: '0.5'\nlatency_ms: '20'\n"
    assert plan.files()[r.config_path] == r.config_text


def test_files_hold_every_bootstrap_as_json(plan: Plan) -> None:
    files = plan.files()
    assert json.loads(files[plan.ingress.bootstrap_path])["node"]["id"] == "ingress~gateway"
    for r in plan.replicas:
        assert json.loads(files[r.bootstrap_path])["node"]["id"] == r.node_id
    assert len(files) == 1 + 2 * len(plan.replicas)


def test_envoys_never_hot_restart_and_use_one_worker(plan: Plan) -> None:
    for spec in [plan.ingress.process, *(r.sidecar for r in plan.replicas)]:
        assert spec.argv[0] == "/venv/bin/envoy"
        assert "--disable-hot-restart" in spec.argv
        assert spec.argv[spec.argv.index("--concurrency") + 1] == "1"


def test_control_plane_command(plan: Plan) -> None:
    cp = plan.control_plane
    assert cp.process.argv == (
        "/venv/bin/python",
        "-m",
        "grpcmesh_control",
        "control-plane",
        "--state-dir",
        str(plan.run_dir),
        "--xds-port",
        str(cp.xds_port),
        "--admin-port",
        str(cp.admin_port),
    )


def test_ingress_tls_files_reach_the_control_plane_and_never_a_bootstrap(
    examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    files = GatewayTlsFiles(Path("/pki/gw.crt"), Path("/pki/gw.key"), Path("/pki/clients.crt"))
    plan = build_plan(
        examples, itertools.count(FIRST_PORT), dataclasses.replace(settings, ingress_tls=files)
    )
    argv = plan.control_plane.process.argv
    assert argv[argv.index("--admin-port") + 2 :] == (
        "--ingress-tls-cert",
        "/pki/gw.crt",
        "--ingress-tls-key",
        "/pki/gw.key",
        "--ingress-client-ca",
        "/pki/clients.crt",
    )
    assert plan.ingress.tls
    assert not any("/pki/" in text for text in plan.files().values())
    assert not build_plan(examples, itertools.count(FIRST_PORT), settings).ingress.tls


def test_services_without_workload_run_nothing(settings: LocalSettings) -> None:
    routing_only = PAYMENTS.split("  workload:")[0] + "  versions: [{name: v1, weight: 100}]\n"
    services = parse(routing_only)
    assert ports_needed(services) == 4
    plan = build_plan(services, itertools.count(FIRST_PORT), settings)
    assert plan.replicas == ()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("command: [python3, -m, grpcmesh_payments]", "command: []"),
            "MeshService default/payments: spec.workload.command: required in local mode",
        ),
        (
            (
                "{name: GRPCMESH_LOG_LEVEL, value: DEBUG}",
                "{name: X, valueFrom: {secretKeyRef: {name: s, key: k}}}",
            ),
            "MeshService default/payments: spec.workload.env X: valueFrom is not supported",
        ),
    ],
)
def test_resources_local_mode_cannot_run_are_refused(
    settings: LocalSettings, edit: tuple[str, str], message: str
) -> None:
    services = parse(PAYMENTS.replace(*edit))
    with pytest.raises(PlanError, match=message):
        build_plan(services, itertools.count(FIRST_PORT), settings)


def test_too_few_or_repeated_ports_are_refused(
    examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    with pytest.raises(PlanError, match="ran out of ports after 3"):
        build_plan(examples, iter(range(FIRST_PORT, FIRST_PORT + 3)), settings)
    with pytest.raises(PlanError, match="port 20000 is invalid or given twice"):
        build_plan(examples, itertools.cycle([FIRST_PORT]), settings)


def test_prometheus_scrapes_every_process_of_the_plan_with_the_rules(
    examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    with_prometheus = dataclasses.replace(settings, prometheus="/usr/bin/prometheus")
    plan = build_plan(examples, itertools.count(FIRST_PORT), with_prometheus)
    assert plan.prometheus is not None
    assert ports_needed(examples, prometheus=True) == ports_needed(examples) + 1
    config = yaml.safe_load(plan.files()[plan.prometheus.config_path])
    assert config["rule_files"] == [str(plan.prometheus.rules_path)]
    targets = {
        job["job_name"]: [t["targets"][0] for t in job["static_configs"]]
        for job in config["scrape_configs"]
    }
    assert targets["grpcmesh-app"] == [r.metrics_address for r in plan.replicas]
    assert targets["grpcmesh-envoy"] == [
        *(r.admin_address for r in plan.replicas),
        plan.ingress.admin_address,
    ]
    assert targets["grpcmesh-control-plane"] == [plan.control_plane.admin_address]
    argv = plan.prometheus.process.argv
    assert argv[0] == "/usr/bin/prometheus"
    assert f"--web.listen-address=127.0.0.1:{plan.prometheus.port}" in argv
    assert build_plan(examples, itertools.count(FIRST_PORT), settings).prometheus is None


def test_an_otlp_endpoint_traces_every_envoy_and_app(
    examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    traced = dataclasses.replace(settings, otlp_endpoint="127.0.0.1:4317")
    plan = build_plan(examples, itertools.count(FIRST_PORT), traced)
    for r in plan.replicas:
        node = ProxyNode.from_node(r.node_id, _metadata(r.bootstrap))
        assert (node.otlp_collector, node.access_log) == ("127.0.0.1:4317", True)
        assert r.app.env["GRPCMESH_OTLP_ENDPOINT"] == "127.0.0.1:4317"
    ingress = ProxyNode.from_node(plan.ingress.node_id, _metadata(plan.ingress.bootstrap))
    assert ingress.otlp_collector == "127.0.0.1:4317"
    # One sampling ratio for every Envoy and app: the mesh's default unless set.
    assert settings.trace_sampling == DEFAULT_SAMPLING_RATIO
    sampled = build_plan(
        examples,
        itertools.count(FIRST_PORT),
        dataclasses.replace(traced, trace_sampling=0.25),
    )
    for r in sampled.replicas:
        assert ProxyNode.from_node(r.node_id, _metadata(r.bootstrap)).trace_sampling == 0.25
        assert float(r.app.env["GRPCMESH_TRACE_SAMPLING_RATIO"]) == 0.25
    sampled_ingress = _metadata(sampled.ingress.bootstrap)
    assert ProxyNode.from_node(sampled.ingress.node_id, sampled_ingress).trace_sampling == 0.25
    with pytest.raises(PlanError, match="trace sampling"):
        build_plan(
            examples,
            itertools.count(FIRST_PORT),
            dataclasses.replace(settings, trace_sampling=2.0),
        )
    untraced = build_plan(examples, itertools.count(FIRST_PORT), settings)
    assert all("GRPCMESH_OTLP_ENDPOINT" not in r.app.env for r in untraced.replicas)
    with pytest.raises(PlanError, match="OTLP endpoint"):
        build_plan(
            examples,
            itertools.count(FIRST_PORT),
            dataclasses.replace(settings, otlp_endpoint="http://collector"),
        )


CANARY = PAYMENTS.replace(
    "    - {name: v2, weight: 0, replicas: 1}\n",
    """    - name: v2
      weight: 0
      replicas: 1
      image: payments:2
      command: [python3, -m, grpcmesh_payments_next]
      args: []
      env:
        - {name: GRPCMESH_LOG_LEVEL, value: WARNING}
        - {name: FEATURE, value: "on"}
""",
)


def test_versions_run_their_own_command_args_and_env(settings: LocalSettings) -> None:
    plan = build_plan(parse(CANARY), itertools.count(FIRST_PORT), settings)
    stable, canary = plan.replica("payments/v1-0"), plan.replica("payments/v2-0")
    assert stable.app.argv == ("/venv/bin/python", "-m", "grpcmesh_payments", "--verbose")
    assert canary.app.argv == ("/venv/bin/python", "-m", "grpcmesh_payments_next")
    # The version's env is laid over the workload's by name; the rest is inherited.
    assert stable.app.env["GRPCMESH_LOG_LEVEL"] == "DEBUG"
    assert canary.app.env["GRPCMESH_LOG_LEVEL"] == "WARNING"
    assert canary.app.env["FEATURE"] == "on"
    assert "FEATURE" not in stable.app.env


def test_every_app_is_told_its_version(settings: LocalSettings) -> None:
    plan = build_plan(parse(CANARY), itertools.count(FIRST_PORT), settings)
    assert {r.replica: r.app.env["GRPCMESH_VERSION"] for r in plan.replicas} == {
        "v1-0": "v1",
        "v1-1": "v1",
        "v2-0": "v2",
    }


def test_a_versions_secret_reference_is_refused_naming_the_version(
    settings: LocalSettings,
) -> None:
    secret = CANARY.replace(
        '{name: FEATURE, value: "on"}',
        "{name: FEATURE, valueFrom: {secretKeyRef: {name: s, key: k}}}",
    )
    with pytest.raises(PlanError, match=r"spec\.versions\[1\]\.env FEATURE: valueFrom"):
        build_plan(parse(secret), itertools.count(FIRST_PORT), settings)


# --- replan: following a live apply ------------------------------------------------------------


def _with(examples: tuple[MeshService, ...], name: str, **changes: Any) -> list[MeshService]:
    return [dataclasses.replace(s, **changes) if s.name == name else s for s in examples]


def test_replan_keeps_running_replicas_and_gives_new_ones_fresh_ports(
    plan: Plan, examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    payments = next(s for s in examples if s.name == "payments")
    three = tuple(
        dataclasses.replace(v, replicas=3) if v.name == "v1" else v for v in payments.versions
    )
    services = _with(examples, "payments", versions=three)
    assert new_replicas(plan, services) == 2  # the examples run one v1 replica
    fresh = itertools.count(40000)
    after = replan(plan, services, fresh, settings)
    before = {r.key: r for r in plan.replicas}
    # Every replica that existed is the very same plan: nothing about it restarts.
    for r in after.replicas:
        if r.key in before:
            assert r == before[r.key], r.key
    added = [ports_of(after.replica(f"payments/v1-{i}")) for i in (1, 2)]
    assert added == [
        tuple(range(40000, 40000 + PORTS_PER_REPLICA)),
        tuple(range(40000 + PORTS_PER_REPLICA, 40000 + 2 * PORTS_PER_REPLICA)),
    ]
    assert next(fresh) == 40000 + 2 * PORTS_PER_REPLICA
    assert (after.control_plane, after.ingress) == (plan.control_plane, plan.ingress)
    assert after.services == tuple(sorted(services, key=lambda s: s.name))


def test_replan_changes_only_the_config_of_a_replica_whose_spec_config_changed(
    plan: Plan, examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    services = _with(examples, "payments", config=(("failure_rate", "0.5"),))
    after = replan(plan, services, iter(()), settings)
    old, new = plan.replica("payments/v1-0"), after.replica("payments/v1-0")
    assert (new.app, new.sidecar, new.bootstrap) == (old.app, old.sidecar, old.bootstrap)
    assert new.config_text == "failure_rate: '0.5'\n" != old.config_text


def test_replan_drops_removed_services_and_versions(
    plan: Plan, examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    services = [s for s in examples if s.name != "catalog"]
    after = replan(plan, services, iter(()), settings)
    assert {r.service for r in after.replicas} == {"inventory", "orders", "payments"}
    assert new_replicas(plan, services) == 0


def test_replan_points_the_running_prometheus_at_the_new_replicas(
    examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    with_prometheus = dataclasses.replace(settings, prometheus="/usr/bin/prometheus")
    plan = build_plan(examples, itertools.count(FIRST_PORT), with_prometheus)
    services = [s for s in examples if s.name != "catalog"]
    after = replan(plan, services, iter(()), with_prometheus)
    assert after.prometheus is not None and plan.prometheus is not None
    assert after.prometheus.process == plan.prometheus.process  # the same process, re-read
    config = yaml.safe_load(after.prometheus.config_text)
    apps = next(j for j in config["scrape_configs"] if j["job_name"] == "grpcmesh-app")
    assert [t["targets"][0] for t in apps["static_configs"]] == [
        r.metrics_address for r in after.replicas
    ]
    assert plan.replica("catalog/v1-0").metrics_address not in after.prometheus.config_text


def test_a_proxyless_services_app_gets_its_xds_bootstrap(
    examples: tuple[MeshService, ...], settings: LocalSettings
) -> None:
    services = tuple(dataclasses.replace(svc, proxyless=svc.name == "orders") for svc in examples)
    plan = build_plan(services, itertools.count(FIRST_PORT), settings)
    orders = plan.replica("orders/v1-1")
    bootstrap = json.loads(orders.app.env["GRPCMESH_XDS_BOOTSTRAP"])
    assert bootstrap["xds_servers"][0]["server_uri"] == plan.control_plane.xds_address
    node = ProxyNode.from_node(bootstrap["node"]["id"], bootstrap["node"]["metadata"])
    assert node.id == NodeId.proxyless("orders", "v1-1")
    assert node.egress_port == orders.egress_port  # its external backends' way out
    # The sidecar stays (inbound calls); other services dial through theirs as before.
    assert orders.app.env["GRPCMESH_SIDECAR_EGRESS"] == f"127.0.0.1:{orders.egress_port}"
    assert "GRPCMESH_XDS_BOOTSTRAP" not in plan.replica("catalog/v1-1").app.env
