"""The chart installed for real: rendered by the Helm engine, applied server-side to the real
control plane, and the operator run from the installed wheel with only its ServiceAccount's
token (``tests/cluster/operator_process.py`` says what the test stands in for).

One install serves the whole module; the tests run in file order on it: the examples test
removes the chart's reference MeshServices (names and gRPC services are unique in the mesh),
and the last test stops the operator and reads its log. The prometheus-operator CRDs
(``../shared/contracts``) are installed first, so the monitoring objects meet the real
apiserver's validation too.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from grpcmesh_control.cluster.objects.mesh_ca import mesh_ca_from_secret
from grpcmesh_control.mesh.ca import CertificateAuthority
from tests.chart.chart import render
from tests.cluster.chart_release import ChartRelease
from tests.cluster.kube import KubeCluster, KubectlError, wait_until
from tests.cluster.operator_process import OperatorProcess, log_problems
from tests.loopback import free_port
from tests.package import InstalledPackage
from tests.shared import REPO, shared_path
from tests.unit.mesh.test_ca import make_intermediate

Obj = dict[str, Any]

RELEASE = "chart-install"  # also its namespace; cluster-scoped names start with it
OTHER = f"{RELEASE}-other"
EXAMPLES = f"{RELEASE}-examples"
MONITORING = {
    "serviceMonitors": {"enabled": True},  # the operator then renders one per MeshService
    "prometheusRules": {"enabled": True},
    "dashboards": {"enabled": True},
}
MESH_CA_SECRET = f"{RELEASE}-grpcmesh-mesh-ca"  # <fullname>-mesh-ca; the test checks the env
GATEWAY_TLS_SECRET = f"{RELEASE}-gateway-tls"  # gateway.tls.secretName: the user's (or issuer's)
PROXY_CONTAINER = "grpcmesh-proxy"
OPERATOR_MANAGER = "grpcmesh-operator"

# The first test's setup may start the control plane and install the package.
pytestmark = pytest.mark.timeout(300)


def values() -> Obj:
    """The defaults, plus what a shared test machine needs: free ports (the operator binds
    them on this host, not in a pod of its own) and monitoring on."""
    ports = {name: free_port() for name in ("xds", "tokenExchange", "webhook", "metrics", "health")}
    gateway = {"tls": {"secretName": GATEWAY_TLS_SECRET}}
    return {"operator": {"ports": ports}, "monitoring": MONITORING, "gateway": gateway}


@dataclass
class Installed:
    kube: KubeCluster
    release: ChartRelease
    operator: OperatorProcess
    mesh_ca_version: str
    """The resourceVersion of the mesh CA Secret the test wrote before the operator started."""


@pytest.fixture(scope="module")
def installed(
    kube: KubeCluster, installed_package: InstalledPackage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    monitoring_crds = str(shared_path("contracts", "prometheus-operator"))
    with contextlib.ExitStack() as undo:  # in reverse, whatever step failed
        kube.kubectl("apply", "--server-side", "-f", monitoring_crds)
        # Waited for: a later module installing them again would meet them terminating.
        undo.callback(kube.kubectl, "delete", "--ignore-not-found", "-f", monitoring_crds)
        kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", monitoring_crds)
        release = ChartRelease.install(kube, RELEASE, RELEASE, values())
        undo.callback(release.uninstall)
        for name in (OTHER, EXAMPLES):
            kube.create_namespace(name)
            undo.callback(kube.kubectl, "delete", "namespace", name, "--wait=false")
            # Waited for: names are mesh-wide, and a later module's operator must not see them.
            undo.callback(kube.kubectl, "delete", "meshservices", "--all", "-n", name)
        # Bring your own CA: the platform's issuer wrote an intermediate into the mesh CA's
        # Secret before the operator first started (docs/security.md).
        kube.kubectl("apply", "-f", "-", stdin=json.dumps(platform_intermediate_secret()))
        mesh_ca_version = kube.get("secret", MESH_CA_SECRET, RELEASE)["metadata"]["resourceVersion"]
        # The gateway's certificate for outside clients, as cert-manager would write it.
        kube.kubectl("apply", "-f", "-", stdin=json.dumps(gateway_tls_secret()))
        operator = OperatorProcess.start(
            kube, release, installed_package.grpcmesh, tmp_path_factory.mktemp("operator")
        )
        undo.callback(operator.close)
        operator.wait_active()
        yield Installed(kube, release, operator, mesh_ca_version)


# --- helpers ---------------------------------------------------------------------------------


def platform_intermediate_secret() -> Obj:
    """The mesh CA's Secret as cert-manager writes it for an ``isCA`` Certificate that the
    platform's own root issues: ``tls.crt`` the intermediate, ``ca.crt`` their root."""
    now = datetime.now(UTC)
    platform_root = CertificateAuthority.create_root(now, common_name="platform root")
    cert, key = make_intermediate(platform_root, now)
    data = {"tls.crt": cert, "tls.key": key, "ca.crt": platform_root.pem()[2]}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": MESH_CA_SECRET, "namespace": RELEASE},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def controlled_by(owner: Obj, items: list[Obj]) -> list[Obj]:
    uid = owner["metadata"]["uid"]
    return [
        item
        for item in items
        if any(
            ref.get("uid") == uid and ref.get("controller")
            for ref in item["metadata"].get("ownerReferences", [])
        )
    ]


def current(body: Obj) -> bool:
    """Whether a MeshService's status (and each condition) speaks of its current generation."""
    generation = body["metadata"]["generation"]
    status = body.get("status") or {}
    conditions = status.get("conditions") or []
    return (
        bool(conditions)
        and status.get("observedGeneration") == generation
        and all(c.get("observedGeneration") == generation for c in conditions)
    )


def assert_reconciled(kube: KubeCluster, namespace: str, names: list[str]) -> None:
    """Each named MeshService is reconciled: Registered, Ready waiting on its rollout (no
    nodes run the pods), and its Services, ConfigMaps, Deployments (with the sidecar,
    server-side applied) and ServiceMonitor written by the operator."""

    def all_current() -> list[Obj] | None:
        found = {b["metadata"]["name"]: b for b in kube.items("meshservices", namespace)}
        bodies = [found[name] for name in names if name in found]
        return bodies if len(bodies) == len(names) and all(map(current, bodies)) else None

    bodies = wait_until(all_current, f"MeshServices {names} in {namespace} reconciled")
    owned_kinds = {
        r: kube.items(r, namespace)
        for r in ("services", "configmaps", "servicemonitors", "serviceaccounts")
    }
    # managedFields say who wrote what; kubectl hides them unless asked.
    shown = kube.kubectl(
        "get", "deployments", "-n", namespace, "--show-managed-fields", "-o", "json"
    )
    owned_kinds["deployments"] = json.loads(shown)["items"]
    for body in bodies:
        key = f"{namespace}/{body['metadata']['name']}"
        conditions = {c["type"]: (c["status"], c["reason"]) for c in body["status"]["conditions"]}
        assert conditions == {
            "Registered": ("True", "Registered"),
            "Ready": ("False", "Progressing"),
            "Degraded": ("False", "AsExpected"),
        }, (key, conditions)
        owned = {kind: controlled_by(body, items) for kind, items in owned_kinds.items()}
        assert all(owned.values()), (key, {kind: len(items) for kind, items in owned.items()})
        for deployment in owned["deployments"]:
            managers = {
                (f["manager"], f["operation"]) for f in deployment["metadata"]["managedFields"]
            }
            assert (OPERATOR_MANAGER, "Apply") in managers, (key, managers)
            init = deployment["spec"]["template"]["spec"].get("initContainers", [])
            assert [c["name"] for c in init] == [PROXY_CONTAINER], (key, init)
        # Its own ServiceAccount, without a mounted token: the workload's identity.
        (account,) = owned["serviceaccounts"]
        assert account["metadata"]["name"] == body["metadata"]["name"], key
        assert account.get("automountServiceAccountToken") is False, (key, account)
        for deployment in owned["deployments"]:
            pod = deployment["spec"]["template"]["spec"]
            assert pod["serviceAccountName"] == account["metadata"]["name"], key


def can_i(kube: KubeCluster, token: str, verb: str, resource: str) -> bool:
    try:
        kube.kubectl("auth", "can-i", verb, resource, "-n", RELEASE, "--quiet", token=token)
    except KubectlError as exc:
        assert exc.returncode == 1 and not exc.stderr.strip(), exc  # "no", not an error
        return False
    return True


def gateway_tls_secret() -> Obj:
    """A ``kubernetes.io/tls`` Secret for the gateway's listener (``gateway.tls.secretName``)."""
    now = datetime.now(UTC)
    issued = CertificateAuthority.create_root(now, common_name="shop's CA").issue_serving(
        ["shop.example"], now, validity=timedelta(days=1)
    )
    data = {"tls.crt": issued.cert_chain_pem(), "tls.key": issued.key_pem()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": GATEWAY_TLS_SECRET, "namespace": RELEASE},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


# --- the tests, in order ---------------------------------------------------------------------


def test_the_log_scan_sees_refusals_and_tracebacks_only() -> None:
    """The last test's log check can fail: what a 403 and a traceback look like in the log,
    and numbers that only look like one."""
    refused = [
        "2026-12-04 21:31:40,111 ERROR kopf.objects: APIForbiddenError('configmaps is "
        'forbidden: User "system:serviceaccount:x:y" cannot list resource "configmaps"\')',
        "2026-12-04 21:31:40,112 WARNING grpcmesh_control.cluster.controller.operator: resync "
        "failed: 403: Forbidden",
        "Traceback (most recent call last):",
    ]
    harmless = [
        "2026-12-04 21:31:40,403 INFO kopf.objects: Handler 'reconcile' succeeded.",
        "2026-12-04 21:31:50,857 INFO aiohttp.access: 127.0.0.1 [04/Dec/2026:21:31:50 +0000] "
        '"POST /meshservices?timeout=10s HTTP/1.1" 200 403 "-" "kube-apiserver-admission"',
    ]
    assert log_problems("\n".join(refused + harmless)) == refused


def test_the_operator_acts_with_the_charts_service_account_only(installed: Installed) -> None:
    kube, operator = installed.kube, installed.operator
    whoami = json.loads(kube.kubectl("auth", "whoami", "-o", "json", token=operator.token))
    assert whoami["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{RELEASE}:{operator.service_account}"
    )
    # Least privilege, as the API server sees it: no pods, and Secrets only by name.
    for verb, resource in (("list", "pods"), ("list", "secrets"), ("get", "secrets/other")):
        assert not can_i(kube, operator.token, verb, resource), (verb, resource)
    assert can_i(kube, operator.token, "get", f"secrets/{operator.settings.webhook_secret}")


def test_the_replica_is_the_active_peer(installed: Installed) -> None:
    operator = installed.operator
    assert operator.readyz() == 200
    assert operator.settings.peering is not None
    peering = installed.kube.get("clusterkopfpeering", operator.settings.peering)
    assert operator.pod_name in (peering.get("status") or {}), peering.get("status")


def test_the_operator_issues_its_certificate_and_installs_its_ca(installed: Installed) -> None:
    kube, settings = installed.kube, installed.operator.settings
    assert settings.webhook_secret and settings.webhook_configurations
    secret = kube.get("secret", settings.webhook_secret, RELEASE)
    assert secret is not None, "the operator did not create its webhook Secret"
    ca_bundle = secret["data"]["ca.crt"]
    serving = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert settings.webhook_host in names.get_values_for_type(x509.DNSName)
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        for name in settings.webhook_configurations:
            config = kube.get(kind, name)
            assert config is not None, (kind, name)
            assert [w["clientConfig"].get("caBundle") for w in config["webhooks"]] == [
                ca_bundle
            ] * len(config["webhooks"]), (kind, name)


def test_the_operator_serves_mtls_from_the_platforms_intermediate(installed: Installed) -> None:
    """The operator read the mesh CA's Secret the platform wrote (an intermediate under their
    root), left it as it was, and serves mTLS from it."""
    kube, operator = installed.kube, installed.operator
    assert operator.settings.mesh_ca_secret == MESH_CA_SECRET
    secret = kube.get("secret", MESH_CA_SECRET, RELEASE)
    ca = mesh_ca_from_secret(secret)
    assert ca.intermediates == (ca.certificate,) and ca.root != ca.certificate
    assert "platform root" in ca.root.subject.rfc4514_string()
    # Still the one the test wrote: the operator created no root of its own over it.
    assert secret["metadata"]["resourceVersion"] == installed.mesh_ca_version
    wait_until(
        lambda: f"mTLS on: mesh CA from secret {RELEASE}/{MESH_CA_SECRET}" in operator.log(),
        "the operator's log says it serves mTLS from the platform's CA",
    )


def test_the_operator_serves_the_gateways_tls_secret(installed: Installed) -> None:
    """gateway.tls.secretName reached the operator, and with the chart's RBAC alone it read
    that Secret (the log says so only once the certificate checked out) and may not change it."""
    kube, operator = installed.kube, installed.operator
    assert operator.settings.gateway_tls_secret == GATEWAY_TLS_SECRET
    wait_until(
        lambda: f"gateway TLS: serving Secret {RELEASE}/{GATEWAY_TLS_SECRET}" in operator.log(),
        "the operator's log says it serves the gateway's TLS Secret",
    )
    assert can_i(kube, operator.token, "get", f"secrets/{GATEWAY_TLS_SECRET}")
    for verb in ("patch", "delete"):
        assert not can_i(kube, operator.token, verb, f"secrets/{GATEWAY_TLS_SECRET}"), verb


def test_the_operator_reads_no_secret_but_its_own(installed: Installed) -> None:
    """Least privilege on Secrets, as the API server enforces it: the operator gets its
    two Secrets (and the gateway's, above) by name and may create Secrets, and nothing else:
    not another Secret of its namespace, not a list, not a rewrite of the mesh CA."""
    kube, operator = installed.kube, installed.operator
    assert can_i(kube, operator.token, "get", f"secrets/{MESH_CA_SECRET}")
    assert can_i(kube, operator.token, "create", "secrets")
    for verb in ("patch", "update", "delete"):
        assert not can_i(kube, operator.token, verb, f"secrets/{MESH_CA_SECRET}"), verb
    for verb in ("list", "watch"):
        assert not can_i(kube, operator.token, verb, "secrets"), verb
    kube.kubectl(
        "create", "secret", "generic", "someone-elses", "-n", RELEASE, "--from-literal=k=v"
    )
    try:
        with pytest.raises(KubectlError, match="forbidden"):
            kube.kubectl("get", "secret", "someone-elses", "-n", RELEASE, token=operator.token)
    finally:
        kube.kubectl("delete", "secret", "someone-elses", "-n", RELEASE)


def test_the_charts_reference_services_reconcile(installed: Installed) -> None:
    kube = installed.kube
    names = [o["metadata"]["name"] for o in installed.release.find("MeshService")]
    assert names, "the chart's defaults install the reference services"
    assert_reconciled(kube, RELEASE, names)


def test_the_monitoring_objects_pass_the_api_server(installed: Installed) -> None:
    kube = installed.kube
    for kind in ("ServiceMonitor", "PrometheusRule"):
        (obj,) = installed.release.find(kind)
        assert kube.get(kind.lower(), obj["metadata"]["name"], RELEASE) is not None, kind
    # PodMonitors are the alternative to ServiceMonitors (the chart refuses both): the server
    # validates them in a dry run.
    pod_monitors = [
        o
        for o in render(
            {
                "monitoring": {
                    **MONITORING,
                    "serviceMonitors": {"enabled": False},
                    "podMonitors": {"enabled": True},
                }
            },
            release=RELEASE,
            namespace=RELEASE,
        )
        if o["kind"] == "PodMonitor"
    ]
    assert pod_monitors
    kube.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(pod_monitors),
    )


def test_the_network_policies_pass_the_api_server(installed: Installed) -> None:
    """No CNI enforces NetworkPolicies here: they are checked as the API server stores and
    validates them, including peers a user narrows them with."""
    kube = installed.kube
    rendered = installed.release.find("NetworkPolicy")
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in rendered}
    assert components == {"operator", "gateway"}
    for policy in rendered:
        stored = kube.get("networkpolicy", policy["metadata"]["name"], RELEASE)
        assert stored is not None and stored["spec"] == policy["spec"], policy["metadata"]
    narrowed = {
        "networkPolicy": {
            "webhookFrom": [{"ipBlock": {"cidr": "172.20.0.0/16"}}],
            "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"ingress": "allowed"}}}],
        }
    }
    dry_run_network_policies(kube, narrowed)
    # The dry run does validate: a malformed peer is refused, naming the field.
    broken = {"networkPolicy": {"webhookFrom": [{"ipBlock": {"cidr": "not-a-cidr"}}]}}
    with pytest.raises(KubectlError) as refused:
        dry_run_network_policies(kube, broken)
    assert any("ipBlock.cidr" in field for field in refused.value.fields), refused.value


def dry_run_network_policies(kube: KubeCluster, chart_values: Obj) -> None:
    """Server-side dry run of the NetworkPolicies the chart renders with ``chart_values``,
    under new names (the release's own belong to its field manager)."""
    policies = [
        o
        for o in render(chart_values, release=RELEASE, namespace=RELEASE)
        if o["kind"] == "NetworkPolicy"
    ]
    assert len(policies) == 2
    for policy in policies:
        policy["metadata"]["name"] += "-dry-run"
    stdin = yaml.safe_dump_all(policies)
    kube.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=stdin)


def test_the_api_server_refuses_what_the_mesh_cannot_take(installed: Installed) -> None:
    """A second server of a gRPC service; a method the catalog (from the chart's descriptor
    ConfigMap) does not know. Each refusal names the field."""
    kube = installed.kube
    claim: Obj = {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": "catalog-copy"},
        "spec": {
            "grpc": {"port": 50051, "services": ["grpcmesh.shop.v1.CatalogService"]},
            "workload": {"image": "example.com/catalog:1"},
        },
    }
    unknown_method = copy.deepcopy(claim)
    unknown_method["spec"]["methods"] = [
        {"name": "grpcmesh.shop.v1.CatalogService/Teleport", "timeout": "1s"}
    ]
    for doc, problem in (
        (
            claim,
            "spec.grpc.services[0]: grpcmesh.shop.v1.CatalogService is already served by "
            f"MeshService {RELEASE}/catalog",
        ),
        (unknown_method, "spec.methods[0].name: grpcmesh.shop.v1.CatalogService has no method"),
    ):
        with pytest.raises(KubectlError) as refused:
            kube.apply([doc], namespace=OTHER)
        stderr = refused.value.stderr
        assert 'admission webhook "meshservices.webhooks.grpcmesh.io" denied' in stderr, stderr
        assert problem in stderr, stderr
    assert kube.get("meshservice", "catalog-copy", OTHER) is None


def test_the_examples_reconcile_in_another_namespace(installed: Installed) -> None:
    kube = installed.kube
    # The examples are the reference services again: the chart's go first.
    kube.kubectl("delete", "meshservices", "--all", "-n", RELEASE)

    examples = str(REPO / "manifests" / "examples")

    def applied() -> bool:
        # The webhook knows of the deletions once the operator's watch has seen them.
        try:
            kube.kubectl("apply", "-n", EXAMPLES, "-f", examples)
        except KubectlError as exc:
            assert "is already used by MeshService" in exc.stderr, exc.stderr
            return False
        return True

    wait_until(applied, "the examples admitted", timeout=30)
    names = sorted(p.stem for p in Path(examples).glob("*.yaml"))
    assert_reconciled(kube, EXAMPLES, names)


def test_a_pod_labelled_for_injection_gets_the_sidecar(installed: Installed) -> None:
    """In the examples' namespace (after they reconciled), where MeshService catalog and its
    ServiceAccount exist: with xDS authentication the webhook moves the pod onto that account,
    which its sidecar proves; naming another account is refused, naming the field."""
    kube, settings = installed.kube, installed.operator.settings
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "catalog-by-hand",
            "labels": {"grpcmesh.io/inject": "true", "grpcmesh.io/service": "catalog"},
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "example.com/catalog:1",
                    "ports": [{"name": "grpc", "containerPort": 50051}],
                    "securityContext": restricted,
                }
            ]
        },
    }
    created = json.loads(
        kube.kubectl("create", "-n", EXAMPLES, "-o", "json", "-f", "-", stdin=json.dumps(pod))
    )
    spec = created["spec"]
    assert spec["serviceAccountName"] == "catalog"
    (sidecar,) = [c for c in spec.get("initContainers", []) if c["name"] == PROXY_CONTAINER]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar
    assert sidecar["image"] == settings.render.proxy.image
    bootstraps = [v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v]
    assert "catalog-envoy-bootstrap" in bootstraps, spec["volumes"]

    other = copy.deepcopy(pod)
    other["metadata"]["name"] = "catalog-as-intruder"
    other["spec"]["serviceAccountName"] = "inventory"  # exists: another service's
    with pytest.raises(KubectlError) as refused:
        kube.kubectl("create", "-n", EXAMPLES, "-f", "-", stdin=json.dumps(other))
    assert "spec.serviceAccountName" in refused.value.stderr, refused.value.stderr


def test_the_operator_stops_promptly_and_its_log_is_clean(installed: Installed) -> None:
    kube, operator = installed.kube, installed.operator
    # Events are posted without logging a failure: that they exist shows it may create them.
    events = kube.items("events", EXAMPLES)
    assert any(
        (e.get("source") or {}).get("component") == OPERATOR_MANAGER
        and e["involvedObject"]["kind"] == "MeshService"
        for e in events
    ), [e.get("source") for e in events]
    reconciles = operator.reconciles()
    assert reconciles.get("ok", 0) > 0 and reconciles.get("error", 0) == 0, reconciles
    # Stopped at rest: a SIGTERM while kopf is handling events costs 5 s more (kopf 1.45
    # leaves its watch streams' pause-waiter tasks behind) and can log a traceback from it.
    operator.wait_settled()
    # Promptly: before the kubelet would kill it (2-4 s measured).
    grace = float(operator.pod["spec"]["terminationGracePeriodSeconds"])
    code, _ = operator.stop(timeout=grace)
    assert code == 0, operator.log()
    assert log_problems(operator.log()) == [], operator.log()
