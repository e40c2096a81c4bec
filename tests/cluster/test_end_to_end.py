"""End to end on the real control plane: the chart installed, every pod run by the test node
agent from its real image, and the mesh used the way a user would.

What runs how. The chart (``charts/grpcmesh``, rendered by the Helm engine, applied
server-side: CRDs first) is installed with the reference services on and
``podLocalAddress: pod-ip`` (all pods share this machine's network; each gets a loopback pod IP).
The node agent (``tests/cluster/node_agent.py``, ``ImageRunner``) runs **every container from
its image**, built from this checkout with the image tier's kit (``tests/images/kit.py``): the
operator (``grpcmesh-operator``, with the token of the chart's ServiceAccount from the projected
volume the agent materialises, so it acts with exactly the chart's RBAC), each reference
service's app (``grpcmesh-<name>``), their Envoy sidecars (native sidecars) and the ingress
gateway (the stand-in ``envoyproxy/envoy-distroless``). No container runs as a local process.
Replicas are trimmed to what the scenario needs (gateway 1, orders 1, catalog 2) to keep the
module within the CI budget on two cores.

Security as the chart ships it: mTLS STRICT between every sidecar (and the gateway), with the
reference services' ``spec.authorization`` rules allowing exactly the saga's calls
(``tests/mesh_security.py``), and workload certificates that live ``CERT_TTL_S`` seconds
(``identity.certificateTTL``), so every call of the module also crosses rotations.

DNS: the Envoys find the operator's xDS Service by name (the chart's bootstrap); the agent's
DNS server answers it with the Service's ready endpoints, i.e. the operator pod's IP, where
its ADS listens on the Service's port (there is no kube-proxy to map a ClusterIP).

One install serves the whole module and the tests run in file order on it: the last one
deletes a MeshService.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from grpcmesh.shop.v1 import catalog_pb2, catalog_pb2_grpc, orders_pb2_grpc
from grpcmesh_control.cluster.objects.names import APP_CONTAINER, LABEL_SERVICE, PROXY_CONTAINER
from grpcmesh_control.mesh.ca import CertificateAuthority, Issued
from grpcmesh_control.mesh.model.identity import workload_identity
from grpcmesh_control.mesh.translate.authorization import denial_policy_name
from grpcmesh_loadgen.orders import OrderFactory, order_outcome, run_load
from tests.cluster.agent.runners import ImageRunner
from tests.cluster.chart_release import ChartRelease
from tests.cluster.kube import KubeCluster, wait_until
from tests.cluster.node_agent import AgentOptions, AgentThread
from tests.loopback import free_port
from tests.mesh_security import REFERENCE_RULES, SHOP, grpc_status, rbac_denials, tls_probe
from tests.shared import tool

Obj = dict[str, Any]

# The first test carries the module's setup: the image builds (seconds with podman's layer
# cache, minutes cold) and the install up to every MeshService Ready.
pytestmark = pytest.mark.timeout(1200)

RELEASE = "grpcmesh-e2e"  # also its namespace and the chart's fullname
NAMESPACE = RELEASE
SERVICES = ("catalog", "inventory", "payments", "orders")
INGRESS_PORT = 8080  # the gateway's Envoy (grpcmesh.gateway.ingressPort)
ADMIN_PORT = 15000  # every Envoy's admin, on its pod IP in pod-ip mode
INBOUND_PORT = 15006  # a sidecar's inbound listener: what EDS holds for a replica
READY_TIMEOUT = 360.0  # install -> every MeshService Ready, every container from its image
STEP_TIMEOUT = 180.0
CERT_TTL_S = 12
"""Workload certificates live 12 s and are renewed every 6 s (half life): short enough to see
rotations under load in seconds, long enough that a busy machine's operator never lets one
expire."""


def values(images: Mapping[str, str]) -> Obj:
    def image(name: str) -> Obj:
        registry, _, rest = images[name].rpartition("/")
        repository, _, tag = rest.partition(":")
        return {"registry": registry, "repository": repository, "tag": tag}

    ports = {name: free_port() for name in ("xds", "tokenExchange", "webhook", "metrics", "health")}
    reference: Obj = {"enabled": True}
    for service in SERVICES:
        reference[service] = {"image": image(f"grpcmesh-{service}")}
    reference["orders"]["replicas"] = 1
    return {
        "podLocalAddress": "pod-ip",
        "operator": {"image": image("grpcmesh-operator"), "ports": ports},
        "gateway": {"replicas": 1},
        "referenceServices": reference,
        "identity": {"certificateTTL": f"{CERT_TTL_S}s"},
    }


@dataclass
class Mesh:
    kube: KubeCluster
    release: ChartRelease
    agent: AgentThread

    def pods(self, selector: str) -> list[Obj]:
        return self.kube.items("pods", NAMESPACE, selector)

    def ready_pods(self, selector: str) -> list[Obj]:
        return [p for p in self.pods(selector) if pod_ready(p)]

    def one_pod(self, selector: str) -> Obj:
        (pod,) = self.ready_pods(selector)
        return pod

    @property
    def gateway(self) -> str:
        """The gateway pod's IP (its Envoy's ingress and admin listen there)."""
        pod = self.one_pod("app.kubernetes.io/component=gateway")
        return str(pod["status"]["podIP"])

    @property
    def operator_pod(self) -> Obj:
        return self.one_pod("app.kubernetes.io/component=operator")

    def operator_log(self) -> str:
        return self.agent.log(NAMESPACE, self.operator_pod["metadata"]["name"], "operator")

    def describe(self) -> str:
        """Where everything stands, for a failure message."""
        lines = []
        for pod in self.pods(""):
            status = pod.get("status") or {}
            states = {
                s["name"]: (next(iter(s.get("state") or {"?": 0})), s.get("ready"))
                for s in [
                    *status.get("initContainerStatuses", []),
                    *status.get("containerStatuses", []),
                ]
            }
            lines.append(f"pod {pod['metadata']['name']} {status.get('phase')} {states}")
        for body in self.kube.items("meshservices", NAMESPACE):
            conditions = {
                c["type"]: (c["status"], c.get("reason"))
                for c in (body.get("status") or {}).get("conditions", [])
            }
            lines.append(f"meshservice {body['metadata']['name']} {conditions}")
        return "\n".join(lines)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def current_and_ready(body: Mapping[str, Any]) -> bool:
    """Ready True and Degraded False, status and every condition at the current generation."""
    generation = body["metadata"]["generation"]
    status = body.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    return (
        status.get("observedGeneration") == generation
        and all(c.get("observedGeneration") == generation for c in conditions.values())
        and conditions.get("Ready", {}).get("status") == "True"
        and conditions.get("Registered", {}).get("status") == "True"
        and conditions.get("Degraded", {}).get("status") == "False"
    )


def every_endpoint_ready(body: Mapping[str, Any]) -> bool:
    """The status counts every replica's endpoint ready. Ready comes earlier: it needs the
    Deployment available and one ready endpoint, and the EndpointSlice controller can lag
    the Deployment's availability by a moment (CI saw 1 of 2 at Ready)."""
    replicas = body["spec"].get("replicas", 1)
    endpoints = (body.get("status") or {}).get("endpoints")
    return bool(endpoints == {"ready": replicas, "total": replicas})


def all_ready(kube: KubeCluster) -> list[Obj] | None:
    bodies = kube.items("meshservices", NAMESPACE)
    names = {b["metadata"]["name"] for b in bodies}
    if names == set(SERVICES) and all(
        current_and_ready(b) and every_endpoint_ready(b) for b in bodies
    ):
        return bodies
    return None


@pytest.fixture(scope="module")
def mesh(kube: KubeCluster, mesh_images: Mapping[str, str]) -> Iterator[Mesh]:
    agent = AgentThread(
        kube.kubeconfig, AgentOptions(node_name=f"e2e-{os.getpid()}", runner=ImageRunner())
    ).start()
    release: ChartRelease | None = None
    try:
        release = ChartRelease.install(kube, RELEASE, NAMESPACE, values(mesh_images))
        found = Mesh(kube, release, agent)

        def up() -> bool:
            # The gateway's readiness is its own (Envoy holding its first config): Ready
            # MeshServices do not imply it.
            pods = found.pods("")
            return bool(all_ready(kube)) and bool(pods) and all(map(pod_ready, pods))

        try:
            wait_until(up, "every MeshService and every pod Ready", READY_TIMEOUT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{found.describe()}") from None
        yield found
    finally:
        if release is not None:
            release.uninstall()
        agent.stop()


# --- Envoy's admin ----------------------------------------------------------------------------


def admin_get(address: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{address}:{ADMIN_PORT}{path}", timeout=5) as response:
        return str(response.read().decode())


def eds_hosts(envoy: str, cluster: str) -> dict[str, str]:
    """The hosts of ``cluster`` in the load assignment that Envoy at ``envoy`` holds
    (``/clusters``): address -> its health flags."""
    hosts = {}
    prefix = f"{cluster}::"
    for line in admin_get(envoy, "/clusters").splitlines():
        if line.startswith(prefix) and "::health_flags::" in line:
            address = line[len(prefix) :].split("::", 1)[0]
            hosts[address] = line.rsplit("::", 1)[1]
    return hosts


def healthy(envoy: str, cluster: str) -> set[str]:
    """The hosts Envoy balances ``cluster``'s calls over. The operator keeps a replica that
    is not ready in the load assignment as UNHEALTHY (flag ``/failed_eds_health``), so it
    leaves this set before it leaves the assignment."""
    return {a for a, flags in eds_hosts(envoy, cluster).items() if flags == "healthy"}


def counters(envoy: str, pattern: str) -> dict[str, int]:
    """Envoy's counters whose names match ``pattern`` (a regex)."""
    query = urllib.parse.urlencode({"filter": pattern})
    found = {}
    for line in admin_get(envoy, f"/stats?{query}").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            found[name] = int(value)
    return found


def inbound_ssl(envoy: str) -> Counter[str]:
    """The TLS counters of the inbound listener of the sidecar at ``envoy``, by suffix
    (``handshake``, ``fail_verify_error``, ...)."""
    ssl: Counter[str] = Counter()
    for name, value in counters(envoy, rf"^listener\..*_{INBOUND_PORT}\.ssl\.").items():
        ssl[name.rsplit(".ssl.", 1)[1]] += value
    return ssl


def denials(envoy: str) -> dict[str, int]:
    """The sidecar's denial counters by policy (``caller=<who> method=<Service/Method>``), as
    Prometheus scrapes them."""
    return rbac_denials(admin_get(envoy, "/stats/prometheus"))


def slice_ready(kube: KubeCluster, service: str, address: str) -> bool | None:
    """The ``ready`` condition of ``address`` in the EndpointSlices of ``service`` (None:
    not listed)."""
    slices = kube.items("endpointslices", NAMESPACE, f"kubernetes.io/service-name={service}")
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            if address in endpoint["addresses"]:
                return bool((endpoint.get("conditions") or {}).get("ready"))
    return None


# --- calls through the gateway ----------------------------------------------------------------


@dataclass
class CallStream:
    """A steady, bounded stream of calls through the gateway, on a loop of its own: a
    PlaceOrder (orders -> catalog, inventory, payments, through their sidecars) and a
    GetProduct (the gateway -> catalog directly) every ``1 / rate`` seconds, until ``stop``
    or ``limit`` seconds. ``statuses`` counts outcomes by gRPC status name."""

    gateway: str
    rate: float = 4.0
    limit: float = 240.0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> CallStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Counter[str]:
        self._stop.set()
        self._thread.join(self.limit + 30)
        return self.statuses

    def calls(self) -> int:
        return sum(self.statuses.values())

    async def _run(self) -> None:
        factory = OrderFactory(f"e2e-{uuid.uuid4().hex[:8]}")
        began = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        async with grpc.aio.insecure_channel(f"{self.gateway}:{INGRESS_PORT}") as channel:
            orders = orders_pb2_grpc.OrderServiceStub(channel)
            catalog = catalog_pb2_grpc.CatalogServiceStub(channel)

            async def call(what: str, make: Any) -> None:
                try:
                    await make()
                except grpc.aio.AioRpcError as exc:
                    self.statuses[exc.code().name] += 1
                    self.errors.append(f"{what}: {exc.code().name}: {exc.details()}")
                else:
                    self.statuses["OK"] += 1

            async def place(index: int) -> None:
                response = await orders.PlaceOrder(factory.request(index), timeout=10)
                outcome = order_outcome(response)
                assert outcome in ("CONFIRMED", "CANCELLED"), outcome

            async def product() -> None:
                request = catalog_pb2.GetProductRequest(product_id="sku-0001")
                await catalog.GetProduct(request, timeout=5)

            index = 0
            while not self._stop.is_set() and time.monotonic() - began < self.limit:
                for task in (
                    call("PlaceOrder", lambda i=index: place(i)),
                    call("GetProduct", product),
                ):
                    pending.add(asyncio.create_task(task))
                index += 1
                await asyncio.sleep(1 / self.rate)
            await asyncio.gather(*pending)


# --- the tests, in order ----------------------------------------------------------------------


def test_every_meshservice_is_ready_and_every_pod_runs_from_its_image(mesh: Mesh) -> None:
    kube = mesh.kube
    bodies = all_ready(kube)
    assert bodies is not None, mesh.describe()
    for body in bodies:
        status = body["status"]
        conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
        assert conditions == {
            "Registered": ("True", "Registered"),
            "Ready": ("True", "Serving"),
            "Degraded": ("False", "AsExpected"),
        }, (body["metadata"]["name"], conditions)
        replicas = body["spec"].get("replicas", 1)
        assert status["endpoints"] == {"ready": replicas, "total": replicas}, body["metadata"]
        # ackedVersion is the one config version every sidecar of the service ACKed. With
        # pod-ip each replica's config differs (its own bind address), so only a service of
        # one replica has one; Ready (Serving, past AwaitingAck) says every sidecar ACKed.
        if replicas == 1:
            assert status.get("ackedVersion"), body["metadata"]["name"]

    pods = mesh.pods("")
    assert pods and all(pod_ready(p) for p in pods), mesh.describe()
    assert {p["spec"]["nodeName"] for p in pods} == {mesh.agent.node_name}
    runtime = kube.get("node", mesh.agent.node_name)["status"]["nodeInfo"]
    assert runtime["containerRuntimeVersion"] == "grpcmesh-node-agent://image"
    # Meshed pods: the Envoy sidecar is a native sidecar (an init container that keeps running).
    for service in SERVICES:
        for pod in mesh.pods(f"{LABEL_SERVICE}={service}"):
            (sidecar,) = pod["status"]["initContainerStatuses"]
            assert sidecar["name"] == PROXY_CONTAINER and "running" in sidecar["state"]
            (app,) = pod["status"]["containerStatuses"]
            assert app["name"] == APP_CONTAINER and app["ready"], pod["metadata"]["name"]

    # The operator is the chart's Deployment, from its image, as the chart's ServiceAccount.
    operator = mesh.operator_pod
    (container,) = operator["spec"]["containers"]
    assert (
        container["image"]
        == mesh.release.one("Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"][
            "containers"
        ][0]["image"]
    )
    assert operator["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    log = mesh.operator_log()
    assert "Traceback" not in log and " 403" not in log, log[-4000:]


def test_orders_through_the_gateway_all_succeed(mesh: Mesh) -> None:
    report = asyncio.run(run_load(f"{mesh.gateway}:{INGRESS_PORT}", 40, 8.0, deadline_s=10.0))
    assert report.statuses == {"OK": 40}, report.error_samples
    assert set(report.outcomes) <= {"CONFIRMED", "CANCELLED"} and report.outcomes["CONFIRMED"]
    # They went through the gateway's Envoy: it counted them on the orders route's cluster.
    sent = counters(mesh.gateway, r"^cluster\.orders\|v1\.upstream_rq_total$")
    assert sent.get("cluster.orders|v1.upstream_rq_total", 0) >= 40, sent


def presented_identities(envoy: str) -> set[str]:
    """The URI SANs of the certificates Envoy at ``envoy`` holds (``/certs``): its own
    workload certificate, as it got it over SDS."""
    certs = json.loads(admin_get(envoy, "/certs"))["certificates"]
    return {
        san["uri"]
        for entry in certs
        for cert in entry.get("cert_chain") or []
        for san in cert.get("subject_alt_names") or []
        if "uri" in san
    }


def test_the_saga_runs_over_mtls_strict_with_workload_identities(mesh: Mesh) -> None:
    """The chart's operator loaded its CA from the release's Secret and issued every sidecar
    and the gateway a certificate for its SPIFFE ID; the saga's calls (the previous test)
    went over mutual TLS, verified on both sides; a plaintext caller gets only the health
    check."""
    kube = mesh.kube
    secret = kube.get("secret", f"{RELEASE}-mesh-ca", NAMESPACE)
    assert secret is not None and set(secret["data"]) >= {"tls.crt", "tls.key", "ca.crt"}
    prefix = f"spiffe://cluster.local/ns/{NAMESPACE}/sa"
    assert presented_identities(mesh.gateway) == {f"{prefix}/grpcmesh-ingress"}
    for service in SERVICES:
        for pod in mesh.ready_pods(f"{LABEL_SERVICE}={service}"):
            address = str(pod["status"]["podIP"])
            assert presented_identities(address) == {f"{prefix}/{service}"}, address
    # orders took the saga's calls over mTLS: its inbound listener completed handshakes
    # with a verified client certificate, and none failed verification.
    orders = pod_ip(mesh, "orders")
    ssl = inbound_ssl(orders)
    assert ssl["handshake"] > 0, ssl
    assert ssl["no_certificate"] == 0, ssl
    assert not {k: v for k, v in ssl.items() if k.startswith("fail_verify") and v}, ssl
    # The gateway originated mTLS to orders (its upstream cluster's TLS handshakes).
    upstream = counters(mesh.gateway, r"^cluster\.orders\|v1\.ssl\.handshake$")
    assert upstream.get("cluster.orders|v1.ssl.handshake", 0) > 0, upstream
    # STRICT: a caller without a certificate reaches the app's gRPC health check (the
    # kubelet's probes take that way) and nothing else: the call never gets to the app, and
    # the sidecar counts the refusal (a request no route of the plaintext chain takes).
    no_route = r"^http\.inbound\.no_route$"
    before = counters(orders, no_route).get("http.inbound.no_route", 0)
    with grpc.insecure_channel(f"{orders}:{INBOUND_PORT}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        factory = OrderFactory(f"e2e-plain-{uuid.uuid4().hex[:8]}")
        with pytest.raises(grpc.RpcError) as refused:
            orders_pb2_grpc.OrderServiceStub(channel).PlaceOrder(factory.request(0), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED, refused.value
    wait_until(
        lambda: counters(orders, no_route).get("http.inbound.no_route", 0) > before,
        "orders' sidecar counting the refused plaintext call",
        10,
    )


def pod_ip(mesh: Mesh, service: str) -> str:
    """The pod IP of ``service``'s one ready replica: its sidecar's inbound and admin."""
    return str(mesh.one_pod(f"{LABEL_SERVICE}={service}")["status"]["podIP"])


def mesh_ca(kube: KubeCluster) -> CertificateAuthority:
    """The mesh CA as the operator loaded it: the release's Secret."""
    data = kube.get("secret", f"{RELEASE}-mesh-ca", NAMESPACE)["data"]
    pem = {key: base64.b64decode(value) for key, value in data.items()}
    return CertificateAuthority.from_pem(pem["tls.crt"], pem["tls.key"], pem["ca.crt"])


def issue(ca: CertificateAuthority, service: str) -> Issued:
    """A workload certificate for ``service``'s identity in the release namespace: what its
    sidecar would present."""
    identity = workload_identity(service, NAMESPACE)
    return ca.issue_workload(identity, dt.datetime.now(dt.UTC), ttl=dt.timedelta(minutes=5))


def test_the_saga_ran_under_rules_that_allow_exactly_its_calls(mesh: Mesh) -> None:
    """The chart's reference services carry the rules; the saga's calls so far (the orders
    test, through every hop) were all allowed by them, and no sidecar denied a call."""
    for body in mesh.kube.items("meshservices", NAMESPACE):
        name = body["metadata"]["name"]
        assert body["spec"]["authorization"] == {"rules": REFERENCE_RULES[name]}, name
    for service in SERVICES:
        for pod in mesh.ready_pods(f"{LABEL_SERVICE}={service}"):
            address = str(pod["status"]["podIP"])
            enforced = counters(address, r"^http\.inbound\.rbac\.authz\.(allowed|denied)$")
            assert enforced.get("http.inbound.rbac.authz.denied") == 0, (service, enforced)
            assert all(count == 0 for count in denials(address).values()), service
        # Every service took calls through its rules (catalog on either replica).
        allowed = sum(
            counters(str(p["status"]["podIP"]), r"^http\.inbound\.rbac\.authz\.allowed$").get(
                "http.inbound.rbac.authz.allowed", 0
            )
            for p in mesh.ready_pods(f"{LABEL_SERVICE}={service}")
        )
        assert allowed > 0, service


@pytest.mark.parametrize(
    ("client", "stat"),
    [("foreign-ca", "fail_verify_error"), ("no-certificate", "fail_verify_no_cert")],
)
def test_a_caller_without_a_mesh_certificate_is_refused_and_counted(
    mesh: Mesh, client: str, stat: str
) -> None:
    """TLS to payments' inbound listener with orders' identity signed by a CA the mesh does
    not trust, or with no certificate at all: refused in the handshake, each counted by its
    reason in the sidecar's listener stats."""
    payments = pod_ip(mesh, "payments")
    ca = mesh_ca(mesh.kube)
    roots = ca.pem()[2]
    impostor = issue(CertificateAuthority.create_root(dt.datetime.now(dt.UTC)), "orders")
    before = inbound_ssl(payments)
    outcome = tls_probe(
        f"{payments}:{INBOUND_PORT}", roots, impostor if client == "foreign-ca" else None
    )
    assert outcome.startswith("refused"), outcome

    def counted() -> Counter[str] | None:
        now = inbound_ssl(payments)
        return now if now[stat] > before[stat] else None

    after = wait_until(counted, f"payments' sidecar counting ssl.{stat}", 10)
    assert after["handshake"] == before["handshake"], (before, after)
    # The control: the same probe with a certificate the mesh CA issued is let in.
    accepted = tls_probe(f"{payments}:{INBOUND_PORT}", roots, issue(ca, "orders"))
    assert accepted.startswith("accepted: HTTP/1.1"), accepted


@pytest.mark.parametrize(
    ("caller", "method", "counted_as"),
    [
        ("inventory", "Charge", "other"),  # a MeshService the rules do not name
        ("orders", "GetPayment", "orders"),  # a named caller, a method it was not given
    ],
)
def test_a_caller_the_rules_do_not_allow_is_denied_and_counted(
    mesh: Mesh, caller: str, method: str, counted_as: str
) -> None:
    """A real workload certificate of ``caller`` (from the mesh CA in the release's Secret),
    straight to payments' inbound listener: PERMISSION_DENIED at the sidecar, counted by
    caller and method in the metric the GrpcmeshCallsDenied alert reads."""
    payments = pod_ip(mesh, "payments")
    ca = mesh_ca(mesh.kube)
    policy = denial_policy_name(counted_as, f"PaymentService/{method}")
    before = denials(payments).get(policy, 0)
    path = f"/{SHOP}.PaymentService/{method}"
    status = grpc_status(f"{payments}:{INBOUND_PORT}", path, issue(ca, caller), ca.pem()[2])
    assert status == "7"  # PERMISSION_DENIED
    wait_until(
        lambda: denials(payments).get(policy, 0) > before,
        f"payments' sidecar counting {policy}",
        10,
    )


def workload_serials(envoy: str) -> set[str]:
    """Serial numbers of the workload certificates Envoy at ``envoy`` holds now."""
    certs = json.loads(admin_get(envoy, "/certs"))["certificates"]
    return {
        cert["serial_number"]
        for entry in certs
        for cert in entry.get("cert_chain") or []
        if cert.get("subject_alt_names")
    }


def test_certificates_rotate_under_open_loop_load_without_a_failed_call(mesh: Mesh) -> None:
    """Calls at a steady rate, not waiting for each other (the gateway -> orders -> catalog,
    inventory, payments, and the gateway -> catalog), while the operator renews every
    workload certificate at half its life: each watched Envoy goes through two new
    certificates, and every call succeeds."""
    watched = {"gateway": mesh.gateway} | {s: pod_ip(mesh, s) for s in ("orders", "payments")}
    seen: dict[str, set[str]] = {name: set() for name in watched}

    def rotated_twice() -> bool:
        for name, envoy in watched.items():
            seen[name] |= workload_serials(envoy)
        return all(len(serials) >= 3 for serials in seen.values())

    with CallStream(mesh.gateway) as stream:
        wait_until(rotated_twice, "two rotations in every watched Envoy", CERT_TTL_S * 4)
    statuses = stream.statuses
    assert set(statuses) == {"OK"}, (dict(statuses), stream.errors[:10])
    assert statuses["OK"] >= 20, dict(statuses)


def test_reflection_through_the_gateway_describes_exactly_the_exposed_services(
    mesh: Mesh,
) -> None:
    """The gateway routes server reflection to the operator, which answers from the chart's
    descriptor-set ConfigMap for the exposed services only (catalog and orders)."""
    with grpc.insecure_channel(f"{mesh.gateway}:{INGRESS_PORT}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert sorted(database.get_services()) == [
            "grpcmesh.shop.v1.CatalogService",
            "grpcmesh.shop.v1.OrderService",
        ]
        pool = descriptor_pool.DescriptorPool(database)
        methods = pool.FindServiceByName("grpcmesh.shop.v1.CatalogService").methods_by_name
        assert sorted(methods) == ["GetProduct", "ListProducts"]
        with pytest.raises(KeyError):
            pool.FindServiceByName("grpcmesh.shop.v1.PaymentService")


def test_a_stopped_app_leaves_its_slice_and_the_load_assignment(mesh: Mesh) -> None:
    kube, gateway = mesh.kube, mesh.gateway
    pods = mesh.ready_pods(f"{LABEL_SERVICE}=catalog")
    assert len(pods) == 2
    pod = pods[0]
    name, address = pod["metadata"]["name"], pod["status"]["podIP"]
    endpoint = f"{address}:{INBOUND_PORT}"
    assert endpoint in healthy(gateway, "catalog|v1")

    mesh.agent.stop_container(NAMESPACE, name, APP_CONTAINER)
    try:
        wait_until(
            lambda: slice_ready(kube, "catalog-v1", address) is False,
            "the stopped replica not ready in its EndpointSlice",
            STEP_TIMEOUT,
        )
        wait_until(
            lambda: endpoint not in healthy(gateway, "catalog|v1"),
            "the stopped replica out of the gateway's ready set",
            STEP_TIMEOUT,
        )
        # Marked by the control plane (EDS), not found out by Envoy itself.
        assert "failed_eds_health" in eds_hosts(gateway, "catalog|v1")[endpoint]
        # The other replica stays, and the operator says so.
        assert len(healthy(gateway, "catalog|v1")) == 1
        wait_until(
            lambda: (
                (kube.get("meshservice", "catalog", NAMESPACE)["status"]["endpoints"])
                == {"ready": 1, "total": 2}
            ),
            "catalog's status counting one ready endpoint of two",
            STEP_TIMEOUT,
        )
    finally:
        mesh.agent.start_container(NAMESPACE, name, APP_CONTAINER)
    wait_until(
        lambda: endpoint in healthy(gateway, "catalog|v1"),
        "the restarted replica back in the gateway's ready set",
        STEP_TIMEOUT,
    )
    wait_until(lambda: all_ready(kube), "every MeshService Ready again", STEP_TIMEOUT)


def test_a_deleted_pod_is_replaced_and_eds_follows_without_a_failed_call(mesh: Mesh) -> None:
    kube, gateway = mesh.kube, mesh.gateway
    before = {p["metadata"]["name"]: p for p in mesh.ready_pods(f"{LABEL_SERVICE}=catalog")}
    assert len(before) == 2
    victim = sorted(before)[0]
    old = f"{before[victim]['status']['podIP']}:{INBOUND_PORT}"

    with CallStream(gateway) as stream:
        wait_until(lambda: stream.statuses["OK"] >= 4, "calls flowing", STEP_TIMEOUT)
        kube.kubectl("delete", "pod", victim, "-n", NAMESPACE, "--wait=false")

        def replaced() -> list[Obj] | None:
            now = mesh.ready_pods(f"{LABEL_SERVICE}=catalog")
            fresh = [p for p in now if p["metadata"]["name"] not in before]
            return fresh if len(now) == 2 and fresh else None

        (fresh,) = wait_until(replaced, "a ready replacement catalog pod", STEP_TIMEOUT)
        new = f"{fresh['status']['podIP']}:{INBOUND_PORT}"

        def followed() -> bool:
            hosts = eds_hosts(gateway, "catalog|v1")
            return (
                old not in hosts and healthy(gateway, "catalog|v1") == set(hosts) and new in hosts
            )

        wait_until(followed, "the gateway's EDS following the replacement", STEP_TIMEOUT)
        wait_until(lambda: kube.get("pod", victim, NAMESPACE) is None, "the old pod gone")
        # A few more calls on the new assignment before the stream ends.
        settled = stream.calls() + 8
        wait_until(lambda: stream.calls() >= settled, "calls on the new assignment", STEP_TIMEOUT)
    statuses = stream.statuses
    assert set(statuses) == {"OK"}, (dict(statuses), stream.errors[:10])
    assert statuses["OK"] >= 20, dict(statuses)


def payments_with(weights: Mapping[str, int], mesh: Mesh) -> Obj:
    payments = mesh.release.one("MeshService", "payments")
    payments["spec"]["versions"] = [{"name": n, "weight": w} for n, w in weights.items()]
    return payments


def test_a_canary_weight_applied_with_kubectl_takes_effect(mesh: Mesh) -> None:
    kube = mesh.kube

    def rolled_out(generation: int) -> Obj | None:
        body = kube.get("meshservice", "payments", NAMESPACE)
        ready = body["metadata"]["generation"] >= generation and current_and_ready(body)
        return body if ready and body["status"]["endpoints"]["ready"] == 2 else None

    kube.apply([payments_with({"v1": 90, "v2": 10}, mesh)], namespace=NAMESPACE)
    body = wait_until(lambda: rolled_out(2), "payments v1 90 / v2 10 Ready", READY_TIMEOUT)
    assert len(mesh.ready_pods(f"{LABEL_SERVICE}=payments")) == 2

    kube.apply([payments_with({"v1": 0, "v2": 100}, mesh)], namespace=NAMESPACE)
    wait_until(
        lambda: rolled_out(body["metadata"]["generation"] + 1),
        "payments v1 0 / v2 100 acknowledged",
        STEP_TIMEOUT,
    )
    # Which version served each charge: the orders sidecar's per-version cluster counters.
    orders = str(mesh.one_pod(f"{LABEL_SERVICE}=orders")["status"]["podIP"])
    pattern = r"^cluster\.payments\|v[12]\.upstream_rq_total$"
    first = counters(orders, pattern)
    report = asyncio.run(run_load(f"{mesh.gateway}:{INGRESS_PORT}", 20, 8.0, deadline_s=10.0))
    assert report.statuses == {"OK": 20}, report.error_samples
    after = counters(orders, pattern)

    def sent(version: str, stats: Mapping[str, int]) -> int:
        return stats.get(f"cluster.payments|{version}.upstream_rq_total", 0)

    assert sent("v2", after) - sent("v2", first) >= 20, (first, after)
    assert sent("v1", after) == sent("v1", first), (first, after)


def test_grpcmesh_status_shows_the_cluster_mesh(mesh: Mesh) -> None:
    """``grpcmesh status --cluster``: the API's MeshServices and pods, joined with the operator's
    /status read through the API server's service proxy (so RBAC guards it), every sidecar of
    every pod ACKing the version it is served."""
    kube = mesh.kube
    context = yaml.safe_load(kube.kubeconfig.read_text())["current-context"]
    argv = [
        tool("grpcmesh"), "status", "--cluster", "--context", context, "-n", NAMESPACE,
        "--operator-namespace", NAMESPACE, "--operator-service", f"{RELEASE}-control",
    ]  # fmt: skip
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}

    def converged() -> Obj | None:
        run = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        doc: Obj = json.loads(run.stdout)
        endpoints = [e for s in doc["services"] for e in s["endpoints"]]
        acked = all(
            e["connected"] and e["acked_version"] and e["acked_version"] == e["snapshot_version"]
            for e in endpoints
        )
        return doc if doc["control_plane_reachable"] and acked else None

    doc = wait_until(converged, "every sidecar ACKed in grpcmesh status", STEP_TIMEOUT)
    assert {s["name"] for s in doc["services"]} == set(SERVICES)
    for service in doc["services"]:
        pods = mesh.ready_pods(f"{LABEL_SERVICE}={service['name']}")
        assert {e["replica"] for e in service["endpoints"]} == {p["metadata"]["name"] for p in pods}
        assert all(e["ready"] and e["address"].startswith("127.") for e in service["endpoints"])
        assert service["ready"] == "True"
    assert doc["gateways"] and all(g["connected"] for g in doc["gateways"])
    assert doc["problems"] == []

    table = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    for name in SERVICES:
        assert name in table.stdout


def test_deleting_a_meshservice_removes_everything_it_owned(mesh: Mesh) -> None:
    kube = mesh.kube
    selector = f"{LABEL_SERVICE}=payments"
    kinds = (
        "services",
        "configmaps",
        "serviceaccounts",
        "deployments",
        "replicasets",
        "pods",
        "endpointslices",
    )

    def owned() -> dict[str, list[str]]:
        names = {}
        for kind in kinds:
            items = kube.items(kind, NAMESPACE, selector if kind != "endpointslices" else "")
            if kind == "endpointslices":
                items = [
                    s
                    for s in items
                    if re.match(
                        r"^payments(-v[12])?$",
                        s["metadata"]["labels"].get("kubernetes.io/service-name", ""),
                    )
                ]
            names[kind] = sorted(i["metadata"]["name"] for i in items)
        return names

    present = owned()
    assert all(present.values()), present
    assert len(present["deployments"]) == 2  # v1 and v2

    kube.kubectl("delete", "meshservice", "payments", "-n", NAMESPACE, "--wait=false")
    wait_until(
        lambda: not any(owned().values()),
        "everything payments owned garbage-collected",
        STEP_TIMEOUT,
    )
    assert kube.get("meshservice", "payments", NAMESPACE) is None
    # The others keep running.
    assert {b["metadata"]["name"] for b in kube.items("meshservices", NAMESPACE)} == {
        "catalog",
        "inventory",
        "orders",
    }
