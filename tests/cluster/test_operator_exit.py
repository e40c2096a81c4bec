"""``grpcmesh operator`` that cannot serve says so in one line and exits at once (it used to
log "cannot serve" and linger, or end in a traceback when the webhook port was taken)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster.kube import KubeCluster
from tests.loopback import LOCALHOST, free_port
from tests.shared import tool

_PROMPT = 60.0  # seconds: imports, connects to the API, fails to bind (3 s idle; ~30 s at load 15)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))  # the operator binds its webhook and metrics ports there
        sock.listen()
        yield int(sock.getsockname()[1])


def _operator(kube: KubeCluster, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("grpcmesh"), "operator"],
        env={
            **os.environ,
            "KUBECONFIG": str(kube.kubeconfig),
            "GRPCMESH_XDS_HOST": LOCALHOST,
            "GRPCMESH_XDS_PORT": "0",
            "GRPCMESH_METRICS_PORT": "0",
            # kopf's liveness defaults to 0.0.0.0:8080, which another test's pod may hold.
            "GRPCMESH_LIVENESS": f"http://{LOCALHOST}:{free_port()}/healthz",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=_PROMPT,
        check=False,
    )


@pytest.mark.parametrize("setting", ["GRPCMESH_XDS_PORT", "GRPCMESH_METRICS_PORT"])
def test_a_taken_port_ends_the_operator_with_a_message(
    kube: KubeCluster, taken_port: int, setting: str
) -> None:
    result = _operator(kube, **{setting: str(taken_port)})
    assert result.returncode == 1, result.stderr
    assert "cannot serve" in result.stderr and str(taken_port) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_webhook_port_ends_the_operator_with_a_message(
    kube: KubeCluster, taken_port: int
) -> None:
    pki = kube.state / "pki"  # any certificate will do: the bind fails first
    result = _operator(
        kube,
        GRPCMESH_WEBHOOK_PORT=str(taken_port),
        GRPCMESH_WEBHOOK_HOST=LOCALHOST,
        GRPCMESH_WEBHOOK_CERT=str(pki / "apiserver.crt"),
        GRPCMESH_WEBHOOK_KEY=str(pki / "apiserver.key"),
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot serve" in last and str(taken_port) in last
