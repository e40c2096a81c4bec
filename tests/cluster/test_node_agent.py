"""The test node agent is a kubelet the cluster tier can trust: pods really run, readiness is
earned by probes, and the real EndpointSlice controller follows it.

Runners: every test here runs its containers as local processes (``node_agent``, the fast
runner) except ``test_a_pod_runs_from_its_real_image``, which runs the same kind of pod from
the image-kit stand-in python image (``image`` runner).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import textwrap
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.cluster.conftest import StartAgent
from tests.cluster.kube import KubeCluster, wait_until
from tests.cluster.node_agent import AgentThread

PYTHON_IMAGE = "python:3.11.14-slim-bookworm"  # the image-kit stand-in; process runs use the venv
WEB_PORT = 8080

# An HTTP server on the pod IP whose /ready answers 503 until someone POSTs to it: readiness
# the test hands out. On SIGTERM it writes "terminated" to the file in argv[1], if any.
WEB_SERVER = textwrap.dedent(
    """
    import http.server, json, os, signal, sys
    ready = sick = False
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/live":
                self.send_response(500 if sick else 200)
            else:
                self.send_response(200 if self.path != "/ready" or ready else 503)
            self.end_headers()
            if self.path == "/who":
                self.wfile.write(json.dumps({"uid": os.getuid(), "python": sys.version}).encode())
        def do_POST(self):
            global ready, sick
            if self.path == "/sick":
                sick = True
            else:
                ready = True
            self.send_response(200)
            self.end_headers()
        def log_message(self, *args):
            pass
    def on_term(*_):
        if len(sys.argv) > 1:
            open(sys.argv[1], "w").write("terminated")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    http.server.ThreadingHTTPServer((os.environ["POD_IP"], int(os.environ["PORT"])), Handler)\\
        .serve_forever()
    """
)
POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def web_container(name: str = "web", args: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "name": name,
        "image": PYTHON_IMAGE,
        "command": ["python3", "-c", WEB_SERVER],
        "args": list(args),
        "env": [POD_IP_ENV, {"name": "PORT", "value": str(WEB_PORT)}],
        "ports": [{"name": "http", "containerPort": WEB_PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }


def pod(name: str, containers: Sequence[Mapping[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": list(containers), "terminationGracePeriodSeconds": 5, **spec},
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": WEB_PORT, "targetPort": "http"}]},
    }


def condition(obj: Mapping[str, Any] | None, kind: str) -> str | None:
    for found in (obj or {}).get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return str(found["status"])
    return None


def slice_endpoints(kube: KubeCluster, namespace: str, svc: str) -> list[dict[str, Any]]:
    slices = kube.items("endpointslices", namespace, f"kubernetes.io/service-name={svc}")
    return [ep for s in slices for ep in s.get("endpoints") or []]


def endpoint_ready(kube: KubeCluster, namespace: str, svc: str, address: str) -> bool | None:
    """The ``ready`` condition of ``address`` in the Service's EndpointSlices (None: absent)."""
    for ep in slice_endpoints(kube, namespace, svc):
        if address in ep["addresses"]:
            return bool(ep["conditions"].get("ready"))
    return None


def running_pod(kube: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    def started() -> dict[str, Any] | None:
        found = kube.get("pod", name, namespace)
        statuses = (found or {}).get("status", {}).get("containerStatuses", [])
        return found if statuses and all(s.get("started") for s in statuses) else None

    return wait_until(started, f"pod {name} started", timeout=30)


def who(address: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address}:{WEB_PORT}/who", timeout=5) as response:
        return dict(json.loads(response.read()))


def post(address: str, path: str = "/ready") -> None:
    request = urllib.request.Request(f"http://{address}:{WEB_PORT}{path}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def start_web(kube: KubeCluster, namespace: str, agent: AgentThread) -> str:
    """A web pod behind a Service, running; its pod IP."""
    kube.apply([pod("web", [web_container()]), service("web")], namespace=namespace)
    found = running_pod(kube, namespace, "web")
    address = str(found["status"]["podIP"])
    assert found["spec"]["nodeName"] == agent.node_name
    assert address == agent.pod_ip(namespace, "web")
    wait_until(lambda: _try_who(address), "the server to answer")
    return address


def test_readiness_is_earned_by_the_probe_and_the_endpoint_slice_follows(
    kube: KubeCluster, namespace: str, node_agent: AgentThread
) -> None:
    address = start_web(kube, namespace, node_agent)
    assert address.startswith("127.") and not address.startswith("127.1")

    # Serving, but /ready says 503: started, not ready, and so not ready in the slice.
    wait_until(
        lambda: endpoint_ready(kube, namespace, "web", address) is False,
        "the endpoint listed not ready",
    )
    current = kube.get("pod", "web", namespace)
    assert current["status"]["phase"] == "Running"
    assert condition(current, "Ready") == "False"
    assert current["status"]["containerStatuses"][0]["ready"] is False

    post(address)
    wait_until(lambda: condition(kube.get("pod", "web", namespace), "Ready") == "True", "Ready")
    wait_until(lambda: endpoint_ready(kube, namespace, "web", address), "the endpoint ready")
    current = kube.get("pod", "web", namespace)
    conditions = {c["type"]: c["status"] for c in current["status"]["conditions"]}
    assert (
        conditions.items()
        >= {
            "PodScheduled": "True",
            "Initialized": "True",
            "ContainersReady": "True",
            "Ready": "True",
        }.items()
    )
    assert current["status"]["podIPs"] == [{"ip": address}]
    assert current["status"]["hostIP"] == "127.0.0.1"


def test_a_stopped_process_drops_readiness_and_its_endpoint(
    kube: KubeCluster, namespace: str, node_agent: AgentThread
) -> None:
    address = start_web(kube, namespace, node_agent)
    post(address)
    wait_until(lambda: endpoint_ready(kube, namespace, "web", address), "the endpoint ready")

    node_agent.stop_container(namespace, "web", "web")
    wait_until(
        lambda: endpoint_ready(kube, namespace, "web", address) is False,
        "the endpoint not ready after its process stopped",
    )
    current = kube.get("pod", "web", namespace)
    assert condition(current, "Ready") == "False"
    state = current["status"]["containerStatuses"][0]
    assert "terminated" in state["state"] and state["ready"] is False
    with socket.socket() as probe:
        assert probe.connect_ex((address, WEB_PORT)) != 0, "the server still answers"

    # Started again (a restart): readiness has to be earned anew.
    node_agent.start_container(namespace, "web", "web")
    wait_until(
        lambda: (
            kube.get("pod", "web", namespace)["status"]["containerStatuses"][0]["restartCount"] == 1
        ),
        "the restart counted",
    )
    post_when_up = wait_until(lambda: _try_post(address), "the restarted server")
    assert post_when_up
    wait_until(lambda: endpoint_ready(kube, namespace, "web", address), "ready again")


def _try_post(address: str) -> bool:
    try:
        post(address)
    except OSError:
        return False
    return True


def report_volume(folder: Path) -> dict[str, Any]:
    """A hostPath volume: where a pod's processes leave what the test reads afterwards."""
    return {"name": "report", "hostPath": {"path": str(folder), "type": "Directory"}}


REPORT_MOUNT = {"name": "report", "mountPath": "/report"}


def python(name: str, script: str, *args: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": PYTHON_IMAGE,
        "command": ["python3", "-c", textwrap.dedent(script)],
        "args": list(args),
        "env": [POD_IP_ENV],
        "volumeMounts": [REPORT_MOUNT],
        **fields,
    }


def test_a_native_sidecar_is_started_before_the_app(
    kube: KubeCluster, namespace: str, node_agent: AgentThread, tmp_path: Path
) -> None:
    prepare = python(
        "prepare",
        "import sys; open(sys.argv[1], 'w').write('prepared')",
        "/report/prepared",
    )
    # The sidecar listens only after a second, so the app can start early only if the agent
    # does not wait for the startup probe.
    proxy = python(
        "proxy",
        """
        import os, pathlib, socket, sys, time
        pathlib.Path(sys.argv[1]).write_text(str(pathlib.Path(sys.argv[2]).exists()))
        time.sleep(1)
        server = socket.create_server((os.environ["POD_IP"], 9901))
        while True:
            server.accept()[0].close()
        """,
        "/report/proxy-saw-prepared",
        "/report/prepared",
        restartPolicy="Always",
        ports=[{"name": "admin", "containerPort": 9901}],
        startupProbe={"tcpSocket": {"port": "admin"}, "periodSeconds": 1, "failureThreshold": 30},
    )
    app = python(
        "app",
        """
        import os, socket, sys, time
        with socket.socket() as probe:
            up = probe.connect_ex((os.environ["POD_IP"], 9901)) == 0
        open(sys.argv[1], "w").write(str(up))
        while True:
            time.sleep(60)
        """,
        "/report/app-saw-proxy",
    )
    doc = pod("meshed", [app], initContainers=[prepare, proxy], volumes=[report_volume(tmp_path)])
    kube.apply([doc], namespace=namespace)

    wait_until(lambda: condition(kube.get("pod", "meshed", namespace), "Ready") == "True", "Ready")
    assert (tmp_path / "proxy-saw-prepared").read_text() == "True"
    # The app has no readiness probe (ready once started): its report may lag a little.
    assert wait_until(lambda: _read(tmp_path / "app-saw-proxy"), "the app's report") == "True"
    status = kube.get("pod", "meshed", namespace)["status"]
    init = {s["name"]: s for s in status["initContainerStatuses"]}
    assert init["prepare"]["state"]["terminated"]["exitCode"] == 0
    assert "running" in init["proxy"]["state"]
    assert init["proxy"]["started"] is True and init["proxy"]["ready"] is True
    assert status["phase"] == "Running"


ENV_REPORT = """
import json, os, pathlib, sys
name, config, password, token, token_namespace, scratch, out = sys.argv[1:]
pathlib.Path(scratch, "written").write_text("yes")
names = ["POD_IP", "POD_NAME", "POD_NAMESPACE", "NODE", "GREETING", "PASSWORD", "EGRESS",
         "ESCAPED", "UNKNOWN", "HOSTNAME", "KUBERNETES_SERVICE_HOST"]
pathlib.Path(out).write_text(json.dumps({
    "env": {n: os.environ.get(n) for n in names},
    "name_arg": name,
    "config": pathlib.Path(config).read_text(),
    "password": pathlib.Path(password).read_text(),
    "token": pathlib.Path(token).read_text(),
    "token_namespace": pathlib.Path(token_namespace).read_text(),
    "scratch": pathlib.Path(scratch, "written").read_text(),
}))
"""


def test_env_and_volumes_come_from_the_pod_spec(
    kube: KubeCluster, namespace: str, node_agent: AgentThread, tmp_path: Path
) -> None:
    settings = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"greeting": "hello", "config.yaml": "answer: 42\n"},
    }
    creds = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "stringData": {"password": "s3cret"},
    }

    def field(path: str) -> dict[str, Any]:
        return {"fieldRef": {"fieldPath": path}}

    container = python(
        "report",
        ENV_REPORT,
        "$(POD_NAME)",
        "/etc/settings/config.yaml",
        "/etc/creds/password",
        "/var/run/secrets/tokens/token",
        "/var/run/secrets/tokens/namespace",
        "/scratch",
        "/report/env.json",
    )
    container["env"] = [
        POD_IP_ENV,
        {"name": "POD_NAME", "valueFrom": field("metadata.name")},
        {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
        {"name": "NODE", "valueFrom": field("spec.nodeName")},
        {
            "name": "GREETING",
            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}},
        },
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "EGRESS", "value": "$(POD_IP):15001"},
        {"name": "ESCAPED", "value": "$$(POD_IP)"},
        {"name": "UNKNOWN", "value": "$(NOT_DEFINED)"},
    ]
    container["volumeMounts"] = [
        REPORT_MOUNT,
        {"name": "settings", "mountPath": "/etc/settings", "readOnly": True},
        {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
        {"name": "tokens", "mountPath": "/var/run/secrets/tokens", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    tokens = {
        "sources": [
            {"serviceAccountToken": {"audience": "grpcmesh-test", "path": "token"}},
            {
                "downwardAPI": {
                    "items": [
                        {"path": "namespace", "fieldRef": field("metadata.namespace")["fieldRef"]}
                    ]
                }
            },
        ]
    }
    doc = pod(
        "report",
        [container],
        restartPolicy="Never",
        volumes=[
            report_volume(tmp_path),
            {"name": "settings", "configMap": {"name": "settings"}},
            {"name": "creds", "secret": {"secretName": "creds"}},
            {"name": "tokens", "projected": tokens},
            {"name": "scratch", "emptyDir": {}},
        ],
    )
    kube.apply([settings, creds, doc], namespace=namespace)

    wait_until(
        lambda: kube.get("pod", "report", namespace)["status"].get("phase") == "Succeeded",
        "the report pod to succeed",
    )
    report = json.loads((tmp_path / "env.json").read_text())
    address = kube.get("pod", "report", namespace)["status"]["podIP"]
    assert report["env"] == {
        "POD_IP": address,
        "POD_NAME": "report",
        "POD_NAMESPACE": namespace,
        "NODE": node_agent.node_name,
        "GREETING": "hello",
        "PASSWORD": "s3cret",
        "EGRESS": f"{address}:15001",
        "ESCAPED": "$(POD_IP)",
        "UNKNOWN": "$(NOT_DEFINED)",
        "HOSTNAME": "report",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
    }
    assert report["name_arg"] == "report"
    assert report["config"] == "answer: 42\n"
    assert report["password"] == "s3cret"
    assert report["token_namespace"] == namespace
    assert report["scratch"] == "yes"
    # The projected token is a real one, bound to the pod, for the audience asked for.
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": report["token"], "audiences": ["grpcmesh-test"]},
    }
    reviewed = json.loads(kube.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review)))
    assert reviewed["status"]["authenticated"] is True
    assert reviewed["status"]["user"]["username"] == f"system:serviceaccount:{namespace}:default"
    assert reviewed["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"] == [
        "report"
    ]


def test_deleting_a_pod_stops_its_processes_with_their_grace_period(
    kube: KubeCluster, namespace: str, node_agent: AgentThread, tmp_path: Path
) -> None:
    polite = pod(
        "polite",
        [web_container(args=["/report/polite"]) | {"volumeMounts": [REPORT_MOUNT]}],
        volumes=[report_volume(tmp_path)],
        terminationGracePeriodSeconds=30,
    )
    stubborn = pod(
        "stubborn",
        [
            python(
                "stubborn",
                """
                import os, signal, sys, time
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                open(sys.argv[1], "w").write(str(os.getpid()))
                while True:
                    time.sleep(60)
                """,
                "/report/stubborn-pid",
            )
        ],
        volumes=[report_volume(tmp_path)],
        terminationGracePeriodSeconds=2,
    )
    kube.apply([polite, stubborn], namespace=namespace)
    address = running_pod(kube, namespace, "polite")["status"]["podIP"]
    running_pod(kube, namespace, "stubborn")
    pid = int(wait_until(lambda: _read(tmp_path / "stubborn-pid"), "the stubborn pid"))

    began = time.monotonic()
    kube.kubectl("delete", "pod", "polite", "stubborn", "-n", namespace, "--wait=false")
    wait_until(lambda: kube.get("pod", "polite", namespace) is None, "polite gone", timeout=20)
    # SIGTERM reached it, it exited at once: long before its 30 s grace period.
    assert (tmp_path / "polite").read_text() == "terminated"
    assert time.monotonic() - began < 15
    with socket.socket() as probe:
        assert probe.connect_ex((address, WEB_PORT)) != 0

    wait_until(lambda: kube.get("pod", "stubborn", namespace) is None, "stubborn gone", timeout=20)
    # It ignored SIGTERM: killed once its 2 s were up, and only then removed.
    assert time.monotonic() - began >= 2
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"process {pid} of a deleted pod still runs")


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() and path.read_text() else None


def test_a_pod_runs_from_its_real_image(
    kube: KubeCluster, namespace: str, start_node_agent: StartAgent
) -> None:
    agent = start_node_agent("image")
    container = web_container()
    container["securityContext"] = {
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
    }
    kube.apply([pod("web", [container]), service("web")], namespace=namespace)
    address = str(running_pod(kube, namespace, "web")["status"]["podIP"])
    assert address == agent.pod_ip(namespace, "web")
    identity = wait_until(lambda: _try_who(address), "the server in the image", timeout=30)
    # The image's Python (Debian's 3.11.2) as the pod's runAsUser, not this venv as root.
    assert identity["uid"] == 10001
    assert identity["python"].startswith("3.11.2")
    post(address)
    wait_until(lambda: endpoint_ready(kube, namespace, "web", address), "the endpoint ready")


def _try_who(address: str) -> dict[str, Any] | None:
    try:
        return who(address)
    except OSError:
        return None


def _envoy_front(namespace: str, static_port: int) -> str:
    """An Envoy config (JSON, for --config-yaml) that proxies /static/ to ``static.test`` and
    everything else to the web Service, both STRICT_DNS: what it reaches, DNS gave it."""

    def cluster(name: str, host: str, port: int) -> dict[str, Any]:
        endpoint = {"address": {"socket_address": {"address": host, "port_value": port}}}
        return {
            "name": name,
            "type": "STRICT_DNS",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
            },
        }

    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "front",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/static/"},
                            "route": {"cluster": "static", "prefix_rewrite": "/"},
                        },
                        {"match": {"prefix": "/"}, "route": {"cluster": "web"}},
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": "front",
        "address": {"socket_address": {"address": "$(POD_IP)", "port_value": FRONT_PORT}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    config = {
        "static_resources": {
            "listeners": [listener],
            "clusters": [
                cluster("web", f"web.{namespace}.svc.cluster.local", WEB_PORT),
                cluster("static", "static.test", static_port),
            ],
        }
    }
    return json.dumps(config)


FRONT_PORT = 10000


class _Static(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"static:" + self.path.encode())

    def log_message(self, *args: Any) -> None:
        pass


def test_envoy_resolves_service_names_and_test_hosts_through_the_agent(
    kube: KubeCluster, namespace: str, start_node_agent: StartAgent
) -> None:
    static = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Static)
    threading.Thread(target=static.serve_forever, daemon=True).start()
    try:
        agent = start_node_agent("process", hosts={"static.test": "127.0.0.1"})
        web_address = start_web(kube, namespace, agent)
        post(web_address)
        wait_until(lambda: endpoint_ready(kube, namespace, "web", web_address), "web ready")

        front = {
            "name": "envoy",
            "image": "envoyproxy/envoy-distroless:v1.40.0",
            "command": ["envoy", "--config-yaml", _envoy_front(namespace, static.server_port)],
            "args": ["--disable-hot-restart", "--concurrency", "1", "--log-level", "warning"],
            "env": [POD_IP_ENV],
            "readinessProbe": {"tcpSocket": {"port": FRONT_PORT}, "periodSeconds": 1},
        }
        kube.apply([pod("front", [front])], namespace=namespace)
        wait_until(
            lambda: condition(kube.get("pod", "front", namespace), "Ready") == "True", "front Ready"
        )
        front_address = agent.pod_ip(namespace, "front")

        def through_front(path: str) -> bytes | None:
            try:
                url = f"http://{front_address}:{FRONT_PORT}{path}"
                with urllib.request.urlopen(url, timeout=5) as response:
                    return bytes(response.read())
            except OSError:
                return None

        # The web Service's name resolved to the ready pod's IP: Envoy reached the server.
        answer = wait_until(lambda: through_front("/who"), "web through Envoy", timeout=30)
        assert json.loads(answer)["uid"] == os.getuid()
        # The test's own entry.
        assert (
            wait_until(lambda: through_front("/static/x"), "static through Envoy") == b"static:/x"
        )
    finally:
        static.shutdown()
        static.server_close()


def test_the_null_runner_makes_many_pods_ready_without_running_them(
    kube: KubeCluster, namespace: str, start_node_agent: StartAgent
) -> None:
    # For scale runs only: nothing runs and nothing is probed (this probe's port is closed).
    agent = start_node_agent("none")
    sidecar = web_container("proxy") | {"restartPolicy": "Always"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "many"},
        "spec": {
            "replicas": 20,
            "selector": {"matchLabels": {"app": "many"}},
            "template": {
                "metadata": {"labels": {"app": "many"}},
                "spec": {"containers": [web_container()], "initContainers": [sidecar]},
            },
        },
    }
    kube.apply([deployment], namespace=namespace)
    wait_until(
        lambda: kube.get("deployment", "many", namespace)["status"].get("readyReplicas") == 20,
        "20 ready replicas",
    )
    pods = kube.items("pods", namespace)
    assert {p["spec"]["nodeName"] for p in pods} == {agent.node_name}
    assert len({p["status"]["podIP"] for p in pods}) == 20


def test_a_failing_liveness_probe_restarts_the_container(
    kube: KubeCluster, namespace: str, start_node_agent: StartAgent
) -> None:
    agent = start_node_agent("process", restart_backoff=0.2)
    container = web_container()
    container["livenessProbe"] = {
        "httpGet": {"path": "/live", "port": "http"},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    kube.apply([pod("web", [container], terminationGracePeriodSeconds=1)], namespace=namespace)
    address = str(running_pod(kube, namespace, "web")["status"]["podIP"])
    assert address == agent.pod_ip(namespace, "web")
    wait_until(lambda: _try_who(address), "the server")
    post(address, "/sick")

    def restarted() -> dict[str, Any] | None:
        (status,) = kube.get("pod", "web", namespace)["status"]["containerStatuses"]
        return status if status["restartCount"] >= 1 else None

    status = wait_until(restarted, "a restart after the liveness probe failed", timeout=30)
    assert "terminated" in status["lastState"]
    # The new process starts healthy (its flag was in the old one's memory).
    assert wait_until(lambda: _try_who(address), "the restarted server")


def test_the_node_is_registered_ready_with_a_lease_and_removed_at_stop(
    kube: KubeCluster, start_node_agent: StartAgent
) -> None:
    agent = start_node_agent("process", capacity={"cpu": "4", "memory": "8Gi", "pods": "30"})

    # New nodes start tainted not-ready; the node-lifecycle controller lifts it once it sees
    # the Ready condition, and does not put it back while the Lease is renewed.
    def untainted() -> dict[str, Any] | None:
        found = kube.get("node", agent.node_name)
        return found if found and not found["spec"].get("taints") else None

    node = wait_until(untainted, "the not-ready taint lifted")
    assert condition(node, "Ready") == "True"
    assert node["status"]["allocatable"]["pods"] == "30"
    lease = json.loads(
        kube.kubectl("get", "lease", agent.node_name, "-n", "kube-node-lease", "-o", "json")
    )
    assert lease["spec"]["holderIdentity"] == agent.node_name
    assert lease["metadata"]["ownerReferences"][0]["name"] == agent.node_name

    agent.stop()
    assert kube.get("node", agent.node_name) is None


def test_an_agent_stopped_during_a_graceful_delete_leaves_no_container(
    kube: KubeCluster, namespace: str, start_node_agent: StartAgent, tmp_path: Path
) -> None:
    """The pod is being deleted (its app ignores SIGTERM, so its grace period runs) when the
    agent stops, as at the end of a test that uninstalled a chart: the app and its native
    sidecar, which a graceful stop reaches last, are both killed, not left behind."""
    agent = start_node_agent()
    pid_writer = """
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(sys.argv[1], "w").write(str(os.getpid()))
        while True:
            time.sleep(60)
        """
    sidecar = python("sidecar", pid_writer, "/report/sidecar-pid") | {
        "restartPolicy": "Always",
        "volumeMounts": [REPORT_MOUNT],
    }
    app = python("app", pid_writer, "/report/app-pid") | {"volumeMounts": [REPORT_MOUNT]}
    doc = pod(
        "lingering",
        [app],
        initContainers=[sidecar],
        volumes=[report_volume(tmp_path)],
        terminationGracePeriodSeconds=120,
    )
    kube.apply([doc], namespace=namespace)
    pids = [_wait_for_pid(tmp_path / name) for name in ("sidecar-pid", "app-pid")]
    kube.kubectl("delete", "pod", "lingering", "-n", namespace, "--wait=false")
    wait_until(
        lambda: (
            (kube.get("pod", "lingering", namespace) or {})
            .get("metadata", {})
            .get("deletionTimestamp")
        ),
        "the graceful delete to begin",
    )
    agent.stop()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    assert [pid for pid in pids if alive(pid)] == []


def _wait_for_pid(path: Path) -> int:
    return int(wait_until(lambda: _read(path), f"{path.name} written"))
