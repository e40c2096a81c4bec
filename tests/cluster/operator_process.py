"""The operator run as the chart's Deployment would run it, from an installed package, on the
test control plane (which has no nodes to run the pod).

What a kubelet and the endpoint controller would supply, the test supplies, and only that:

- the container's own ``args`` and ``env`` from the rendered Deployment, its downward-API
  fields resolved for a pod name the test picks;
- credentials: a token of the Deployment's ServiceAccount and nothing else (a kubeconfig with
  that token, no in-cluster variables), so every request carries exactly the chart's RBAC;
- reachability: an EndpointSlice for the Service that selects the pod, at 127.0.0.1 and the
  container ports its ``targetPort`` names, as the endpoint controller would write for a ready
  pod there. The API server calls webhooks at a Service's endpoints (aggregator routing; there
  is no kube-proxy), so this is how it reaches the operator's webhook server.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from tests.cluster.chart_release import ChartRelease
from tests.cluster.kube import KubeCluster, wait_until

__all__ = ["OperatorProcess", "container_env", "log_problems", "stop_process"]

Obj = dict[str, Any]

LOOPBACK = "127.0.0.1"
_COMPONENT = "app.kubernetes.io/component"
_TEST_SLICE_MANAGER = "grpcmesh-tests"  # not the controller's: it leaves the slice alone


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    settings: RuntimeSettings
    """The operator's own reading of the environment it was given."""
    env: dict[str, str]
    pod: Obj
    """The Deployment's pod template it runs."""
    pod_name: str
    service_account: str
    token: str
    """The ServiceAccount's token, the operator's only credential."""
    kubeconfig: Path
    log_path: Path
    _log: IO[bytes]

    @classmethod
    def start(
        cls, kube: KubeCluster, release: ChartRelease, grpcmesh: Path, workdir: Path
    ) -> OperatorProcess:
        """Start the operator Deployment's container as ``grpcmesh`` (the image's entrypoint)
        from an installed package; returns at once (``wait_active`` waits)."""
        (deployment,) = [
            d
            for d in release.find("Deployment")
            if d["metadata"]["labels"].get(_COMPONENT) == "operator"
        ]
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert "command" not in container, "the operator container relies on the image entrypoint"
        pod_name = f"{deployment['metadata']['name']}-0"
        chart_env = container_env(container, pod_name=pod_name, namespace=release.namespace)
        settings = RuntimeSettings.from_env(chart_env)

        account = pod["spec"]["serviceAccountName"]
        token = kube.token(account, release.namespace)
        kubeconfig = kube.kubeconfig_for(token, workdir / "operator.kubeconfig")
        for service in release.find("Service"):
            if _selects(service, pod):
                _publish_loopback_endpoints(kube, service, container)

        env = {
            # A PATH to the package and the token's kubeconfig; nothing from the test's own
            # environment (no KUBERNETES_SERVICE_HOST: not in-cluster). Unlike the image, the
            # venv has no precompiled bytecode: the first start writes what it imports.
            "PATH": f"{grpcmesh.parent}:/usr/bin:/bin",
            "HOME": str(workdir),
            "PYTHONUNBUFFERED": "1",
            "KUBECONFIG": str(kubeconfig),
            **chart_env,
        }
        log_path = workdir / "operator.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            [str(grpcmesh), *container.get("args", [])],
            env=env,
            cwd=workdir,  # outside the checkout: nothing of it is importable
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return cls(process, settings, env, pod, pod_name, account, token, kubeconfig, log_path, log)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def readyz(self) -> int:
        """The status of ``/readyz`` on the metrics port (0: no answer)."""
        url = f"http://{LOOPBACK}:{self.settings.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def reconciles(self) -> dict[str, float]:
        """``grpcmesh_operator_reconciles_total`` by result, from its ``/metrics``."""
        url = f"http://{LOOPBACK}:{self.settings.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {match["result"]: float(match["value"]) for match in _RECONCILES.finditer(text)}

    def wait_settled(self, quiet: float = 1.0, timeout: float = 30.0) -> None:
        """Until no reconcile has started for ``quiet`` seconds (the API server's echoes of
        its own writes have died down)."""
        deadline = time.monotonic() + timeout
        last, since = self.reconciles(), time.monotonic()
        while time.monotonic() - since < quiet:
            assert time.monotonic() < deadline, f"the operator kept reconciling for {timeout}s"
            time.sleep(0.1)
            if (now := self.reconciles()) != last:
                last, since = now, time.monotonic()

    def wait_active(self, timeout: float = 60.0) -> None:
        """Until ``/readyz`` is 200 (this replica is the active peer); fails with the log
        when the process exits first."""

        def active() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the operator exited ({self.process.returncode}):\n{self.log()}"
                )
            return self.readyz() == 200

        wait_until(active, "the operator to become the active peer (/readyz 200)", timeout)

    def stop(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM, as the kubelet sends it; (exit status, seconds it took to exit). Fails
        with the log when it has not exited within ``timeout``."""
        started = time.monotonic()
        code = stop_process(self.process, timeout)
        if code is None:
            raise AssertionError(f"the operator ignored SIGTERM for {timeout:g}s:\n{self.log()}")
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
    """SIGTERM (what the kubelet sends), SIGKILL when it has not exited within ``timeout``;
    its exit status, None when it had to be killed. Reaped either way."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def container_env(container: Mapping[str, Any], *, pod_name: str, namespace: str) -> dict[str, str]:
    """The container's env as the kubelet resolves it (values, and the downward-API fields a
    pod has before it runs)."""
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        path = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        assert path in fields, f"env {var['name']}: {var.get('valueFrom')} is not supported here"
        env[var["name"]] = fields[path]
    return env


def _selects(service: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    selector: Mapping[str, str] = service["spec"].get("selector") or {}
    labels: Mapping[str, str] = pod["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _publish_loopback_endpoints(
    kube: KubeCluster, service: Mapping[str, Any], container: Mapping[str, Any]
) -> None:
    by_name = {p["name"]: int(p["containerPort"]) for p in container.get("ports", [])}
    ports = []
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        number = by_name[target] if isinstance(target, str) else int(target)
        ports.append(
            {"name": port["name"], "port": number, "protocol": port.get("protocol", "TCP")}
        )
    meta = service["metadata"]
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{meta['name']}-loopback",
            "namespace": meta["namespace"],
            "labels": {
                "kubernetes.io/service-name": meta["name"],
                "endpointslice.kubernetes.io/managed-by": _TEST_SLICE_MANAGER,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [LOOPBACK], "conditions": {"ready": True}}],
        "ports": ports,
    }
    kube.apply([endpoint_slice])


# --- the operator's log --------------------------------------------------------------------

_RECONCILES = re.compile(
    r'^grpcmesh_operator_reconciles_total\{result="(?P<result>\w+)"\} (?P<value>\S+)$', re.MULTILINE
)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
_ACCESS_SIZE = re.compile(r'(" \d{3}) \d+ ')  # an access log line's response size
_PROBLEM = re.compile(r"traceback|forbidden|\b403\b", re.IGNORECASE)


def log_problems(text: str) -> list[str]:
    """Lines that show a traceback or a refusal by RBAC (403 Forbidden). Timestamps and
    response sizes are left out of the search (a 403 there is a number, not a status)."""
    problems = []
    for line in text.splitlines():
        searched = _ACCESS_SIZE.sub(r"\1 ", _TIMESTAMP.sub("", line))
        if _PROBLEM.search(searched):
            problems.append(line)
    return problems
