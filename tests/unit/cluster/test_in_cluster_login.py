"""In a pod, the operator's kopf connection goes where the kubelet says the API server is
(KUBERNETES_SERVICE_HOST/PORT), the address its own API client uses too, not to kopf's fixed
``kubernetes.default.svc``, which needs cluster DNS. (tests/cluster/test_end_to_end.py runs
the operator image in a pod whose resolver knows no such name.)"""

from __future__ import annotations

import kopf
import pytest

from grpcmesh_control.cluster.controller.client import in_cluster_server
from grpcmesh_control.cluster.controller.handlers import in_cluster_login

ACCOUNT = kopf.ConnectionInfo(
    server="https://kubernetes.default.svc",
    ca_path="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
    token="a-token",
    default_namespace="grpcmesh-system",
)


@pytest.mark.parametrize(
    ("environ", "server"),
    [
        (
            {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            "https://10.96.0.1:443",
        ),
        (
            {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
            "https://[fd00::1]:6443",
        ),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None),
        ({}, None),
    ],
    ids=["ipv4", "ipv6", "no-port", "outside-a-pod"],
)
def test_in_cluster_server(environ: dict[str, str], server: str | None) -> None:
    assert in_cluster_server(environ) == server


def test_the_service_account_login_goes_to_the_kubelets_address() -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    login = in_cluster_login(ACCOUNT, environ)
    assert login.server == "https://127.0.0.1:6443"
    # Everything else is kopf's reading of the service account, unchanged.
    assert (login.token, login.ca_path, login.default_namespace) == (
        ACCOUNT.token,
        ACCOUNT.ca_path,
        ACCOUNT.default_namespace,
    )


def test_without_the_kubelets_variables_kopfs_default_stays() -> None:
    assert in_cluster_login(ACCOUNT, {}) == ACCOUNT
