"""The chart as a whole: helm lint, every rendered object valid for its schema, restricted pods
with pinned images and bounded resources, RBAC equal to manifests/rbac, CRDs equal to
manifests/crds, webhook paths equal to the operator's kopf handler ids, and a README that
documents every value. Each matrix cell is rendered once (tests/chart/chart.py caches it)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.objects import names as k8s_names
from grpcmesh_control.cluster.objects.pss import read_only_root_violations, restricted_violations
from tests.kube_schemas import K8S_VERSIONS, crd_errors, crd_validators

from .chart import (
    ALLOWED_UNSCHEMED,
    CHART,
    MATRIX,
    NAMESPACE,
    RELEASE,
    REPO,
    VALUE_SETS,
    Cell,
    Obj,
    cert_manager_errors,
    chart,
    containers,
    env_of,
    find,
    is_builtin,
    load_yaml,
    one,
    pod_templates,
    render,
)

RBAC = REPO / "manifests" / "rbac"
SETTINGS_SOURCES = (
    REPO / "operator" / "grpcmesh_control" / "cluster" / "controller" / "settings.py",
    REPO / "operator" / "grpcmesh_control" / "mesh" / "ca.py",  # identity.*, both modes
)
HANDLERS = REPO / "operator" / "grpcmesh_control" / "cluster" / "controller" / "handlers.py"
FULLNAME = RELEASE  # the release name contains the chart name
VALUE_IDS = [name for name, _ in VALUE_SETS]
CELL_IDS = [cell.id for cell in MATRIX]


def lint_errors(values: Mapping[str, Any] | None, kube_version: str | None = None) -> list[str]:
    report = helm_python.lint(CHART, dict(values or {}), kube_version=kube_version)
    errors: list[str] = list(report.get("errors") or [])
    errors += [
        f"{m['path']}: {m['error']}" for m in report.get("messages") or [] if m["severity"] >= 2
    ]
    return errors


# --- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", [None, "1.31.0"])
def test_lint_defaults(kube_version: str | None) -> None:
    assert lint_errors(None, kube_version) == []


@pytest.mark.parametrize("cell", MATRIX, ids=CELL_IDS)
def test_lint_matrix(cell: Cell) -> None:
    assert lint_errors(cell.values(), "1.31.0") == []


def test_lint_reports_bad_values() -> None:
    # Proves the lint above can fail: the schema is enforced.
    assert lint_errors({"operator": {"replicas": "two"}}, "1.31.0")


def test_chart_needs_native_sidecars() -> None:
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert metadata["kubeVersion"] == ">=1.29.0-0"  # init containers with restartPolicy Always
    assert (metadata["apiVersion"], metadata["name"]) == ("v2", "grpcmesh")
    assert (metadata["version"], metadata["appVersion"]) == ("0.1.0", "0.1.0")


# --- every object valid ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "values"), VALUE_SETS, ids=VALUE_IDS)
def test_every_object_validates(name: str, values: Obj) -> None:
    for obj in render(values):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        key = (obj["apiVersion"], obj["kind"])
        if is_builtin(obj):
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{where} ({version}): {exc}")
        elif key in crd_validators():
            assert crd_errors(obj) == [], where
        elif key in ALLOWED_UNSCHEMED:
            assert cert_manager_errors(obj) == [], where
        else:
            pytest.fail(f"{where}: {key} has no schema and is not in ALLOWED_UNSCHEMED")


@pytest.mark.parametrize(("name", "values"), VALUE_SETS, ids=VALUE_IDS)
def test_namespaced_objects_are_in_the_release_namespace(name: str, values: Obj) -> None:
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterKopfPeering",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    }
    for obj in render(values):
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in cluster_scoped:
            assert namespace is None, obj["kind"]
        else:
            assert namespace == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"


def test_no_object_name_repeats() -> None:
    for _, values in VALUE_SETS:
        keys = [(o["kind"], o["metadata"]["name"]) for o in render(values)]
        assert len(keys) == len(set(keys))


# --- pods ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "values"), VALUE_SETS, ids=VALUE_IDS)
def test_pods_are_restricted(name: str, values: Obj) -> None:
    templates = list(pod_templates(render(values)))
    assert templates
    for where, template in templates:
        spec = template["spec"]
        assert restricted_violations(spec, template["metadata"]) == [], where
        assert read_only_root_violations(spec) == [], where
        for container in containers(spec):
            # Numeric users, so the kubelet can verify runAsNonRoot for any image.
            assert container["securityContext"]["runAsUser"] in (10001, 65532), where
            mounts = {m["mountPath"] for m in container.get("volumeMounts") or []}
            assert "/tmp" in mounts, f"{where}: a writable /tmp on a read-only root"


def _images(objects: list[Obj]) -> Iterator[tuple[str, str]]:
    for where, template in pod_templates(objects):
        for container in containers(template["spec"]):
            yield where, container["image"]
            for name, value in env_of(container).items():
                if name.endswith("_IMAGE"):
                    yield f"{where} env {name}", value
    for svc in find(objects, "MeshService"):
        yield f"MeshService/{svc['metadata']['name']}", svc["spec"]["workload"]["image"]


# [host[:port]/]path, then :tag or @sha256:digest.
_PINNED = re.compile(
    r"^(?:[^/@]+/)?[^:@]+(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$"
)


@pytest.mark.parametrize(("name", "values"), VALUE_SETS, ids=VALUE_IDS)
def test_images_are_pinned(name: str, values: Obj) -> None:
    images = list(_images(render(values)))
    assert images
    for where, image in images:
        assert _PINNED.match(image), f"{where}: {image} has no tag or digest"
        assert not image.endswith(":latest"), f"{where}: {image}"


def test_image_rendering() -> None:
    digest = "sha256:" + "ab" * 32
    objects = render(
        {
            "global": {"imageRegistry": "mirror.example.com:5000/grpcmesh"},
            "operator": {"image": {"digest": digest}},
            "proxy": {"image": {"registry": "", "tag": "v1.40.1"}},
        }
    )
    operator = one(objects, "Deployment", f"{FULLNAME}-operator")
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"mirror.example.com:5000/grpcmesh/grpcmesh-operator@{digest}"
    # global.imageRegistry overrides every registry, even an empty one.
    assert env_of(container)["GRPCMESH_PROXY_IMAGE"] == (
        "mirror.example.com:5000/grpcmesh/envoy-distroless:v1.40.1"
    )
    (default,) = one(render({}), "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"][
        "containers"
    ]
    assert default["image"] == "ghcr.io/grpcmesh/grpcmesh-operator:0.1.0"  # tag "": appVersion
    # What skaffold sets: the registry is part of its repository.
    skaffold = {"registry": "", "repository": "localhost:5000/grpcmesh-operator", "tag": "abc12"}
    chart().validate_schema({"operator": {"image": skaffold}})
    (built,) = one(render({"operator": {"image": skaffold}}), "Deployment", f"{FULLNAME}-operator")[
        "spec"
    ]["template"]["spec"]["containers"]
    assert built["image"] == "localhost:5000/grpcmesh-operator:abc12"
    assert _PINNED.match(built["image"])
    no_registry = render({"proxy": {"image": {"registry": ""}}})
    (op,) = one(no_registry, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"][
        "containers"
    ]
    assert env_of(op)["GRPCMESH_PROXY_IMAGE"] == "envoy-distroless:v1.40.0"
    assert _PINNED.match("envoy-distroless:v1.40.0")
    for unpinned in ("envoy-distroless", "localhost:5000/envoy", "ghcr.io/a/b@sha256:12"):
        assert not _PINNED.match(unpinned), unpinned


@pytest.mark.parametrize(("name", "values"), VALUE_SETS, ids=VALUE_IDS)
def test_every_container_has_requests_and_limits(name: str, values: Obj) -> None:
    objects = render(values)
    for where, template in pod_templates(objects):
        for container in containers(template["spec"]):
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert set(resources[bound]) >= {"cpu", "memory"}, f"{where} {bound}"
    for svc in find(objects, "MeshService"):
        resources = svc["spec"]["workload"]["resources"]
        for bound in ("requests", "limits"):
            assert set(resources[bound]) >= {"cpu", "memory"}, svc["metadata"]["name"]


# --- the operator's environment --------------------------------------------------------------


def operator_env(objects: list[Obj]) -> dict[str, Any]:
    deployment = one(objects, "Deployment", f"{FULLNAME}-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "operator"
    return env_of(container)


@pytest.mark.parametrize("cell", MATRIX, ids=CELL_IDS)
def test_operator_environment(cell: Cell) -> None:
    objects = render(cell.values())
    env = operator_env(objects)
    host = f"{FULLNAME}-control.{NAMESPACE}.svc"
    expected = {
        "GRPCMESH_PROVIDER": cell.provider,
        "GRPCMESH_XDS_ADDRESS": f"{host}:18000",
        "GRPCMESH_XDS_PORT": "18000",
        "GRPCMESH_METRICS_PORT": "9090",
        "GRPCMESH_LIVENESS": "http://0.0.0.0:8080/healthz",
        "GRPCMESH_SERVICE_MONITOR": str(
            cell.monitoring and cell.scrape == "serviceMonitors"
        ).lower(),
        "GRPCMESH_RESYNC_SECONDS": "60",
        "GRPCMESH_PROXY_IMAGE": "docker.io/envoyproxy/envoy-distroless:v1.40.0",
        "GRPCMESH_MISSING_BACKENDS": "warn",
        "GRPCMESH_PEERING": FULLNAME,
        "GRPCMESH_PEERING_PRIORITY": "random",
        "GRPCMESH_TRUST_DOMAIN": "cluster.local",
        "GRPCMESH_WORKLOAD_CERT_TTL": "24h",
        "GRPCMESH_CERT_RENEW_FRACTION": "0.5",
        "GRPCMESH_TRACE_SAMPLING_RATIO": "0.01",
        "GRPCMESH_MESH_CA_SECRET": f"{FULLNAME}-mesh-ca",
        "GRPCMESH_WEBHOOK_PORT": "9443",
        "GRPCMESH_WEBHOOK_HOST": host,
        # xDS authentication, on by default (tests/chart/test_gateway.py: the gateway's half).
        "GRPCMESH_XDS_AUTH": "true",
        "GRPCMESH_TOKEN_EXCHANGE_PORT": "18001",
        "GRPCMESH_GATEWAY_SERVICE_ACCOUNT": "grpcmesh-ingress",
        "GRPCMESH_XDS_ROOT_CONFIG_MAP": f"{FULLNAME}-xds-root",
        "POD_ID": {"fieldRef": {"fieldPath": "metadata.name"}},
        "GRPCMESH_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    if cell.cert_manager:
        expected |= {
            "GRPCMESH_WEBHOOK_CERT": "/etc/grpcmesh/webhook/tls.crt",
            "GRPCMESH_WEBHOOK_KEY": "/etc/grpcmesh/webhook/tls.key",
        }
    else:
        expected |= {
            "GRPCMESH_WEBHOOK_SECRET": f"{FULLNAME}-webhook-tls",
            "GRPCMESH_WEBHOOK_CONFIGS": FULLNAME,
        }
    if cell.provider == "appmesh":
        expected |= {
            "GRPCMESH_APPMESH_MESH_NAME": "grpcmesh",
            "GRPCMESH_APPMESH_EGRESS_FILTER": "DROP_ALL",
        }
    assert env == expected
    # The peering object the operator needs exists (it never creates it).
    assert one(objects, "ClusterKopfPeering", FULLNAME)["apiVersion"] == "kopf.dev/v1"


@pytest.mark.parametrize("cell", MATRIX, ids=CELL_IDS)
def test_the_operator_accepts_its_environment(cell: Cell) -> None:
    """The chart's variables, as the kubelet resolves them, make valid operator settings."""
    objects = render(cell.values())
    env = operator_env(objects)
    resolved = {
        "POD_ID": "grpcmesh-operator-7d9f8-abcde",
        "GRPCMESH_NAMESPACE": NAMESPACE,
    }
    environ = {k: v for k, v in env.items() if isinstance(v, str)} | resolved
    assert set(environ) == set(env)
    settings = RuntimeSettings.from_env(environ)
    assert settings.render.provider.value == cell.provider
    assert settings.render.xds_address == f"{FULLNAME}-control.{NAMESPACE}.svc:18000"
    assert settings.render.service_monitor_crd is (
        cell.monitoring and cell.scrape == "serviceMonitors"
    )
    if cell.provider == "appmesh":
        assert settings.render.appmesh.mesh_name == "grpcmesh"
        assert settings.render.appmesh.egress_filter.value == "DROP_ALL"
    assert settings.render.proxy.image == "docker.io/envoyproxy/envoy-distroless:v1.40.0"
    assert settings.peering == FULLNAME
    assert settings.peering_priority > 0
    assert settings.webhook_port == 9443
    assert settings.namespace == NAMESPACE
    assert settings.missing_backends.value == "warn"
    assert settings.mesh_ca_secret == f"{FULLNAME}-mesh-ca"
    assert settings.render.identity.trust_domain == "cluster.local"
    if cell.cert_manager:
        assert not settings.manages_webhook_tls
    else:
        assert settings.manages_webhook_tls
        assert settings.webhook_secret == f"{FULLNAME}-webhook-tls"
        assert set(settings.webhook_configurations) == {FULLNAME}
    read = {v for p in SETTINGS_SOURCES for v in re.findall(r"GRPCMESH_[A-Z_]+", p.read_text())}
    assert {k for k in env if k.startswith("GRPCMESH_")} <= read


def test_operator_pod_mounts_the_cert_manager_secret() -> None:
    objects = render(Cell("native", False, True).values())
    spec = one(objects, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == f"{FULLNAME}-webhook-tls"
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/etc/grpcmesh/webhook", "readOnly": True}
    cert = one(objects, "Certificate", f"{FULLNAME}-webhook")
    assert cert["spec"]["secretName"] == volume["secret"]["secretName"]
    assert f"{FULLNAME}-control.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert (
        cert["spec"]["issuerRef"]["name"]
        == one(objects, "Issuer", f"{FULLNAME}-selfsigned")["metadata"]["name"]
    )
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        annotations = one(objects, kind, FULLNAME)["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{FULLNAME}-webhook"


def test_an_issuer_ref_replaces_the_self_signed_issuer() -> None:
    ref = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    objects = render({"webhooks": {"certManager": {"enabled": True, "issuerRef": ref}}})
    assert find(objects, "Issuer") == []
    assert one(objects, "Certificate", f"{FULLNAME}-webhook")["spec"]["issuerRef"] == ref


def test_control_service_ports() -> None:
    objects = render({})
    service = one(objects, "Service", f"{FULLNAME}-control")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {
        "grpc-xds": (18000, "grpc-xds"),
        "http-token": (18001, "http-token"),  # the token exchange (xDS authentication)
        "https-webhook": (443, "https-webhook"),
        "metrics": (9090, "metrics"),
    }
    pod = one(objects, "Deployment", f"{FULLNAME}-operator")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named == {
        "grpc-xds": 18000,
        "http-token": 18001,
        "https-webhook": 9443,
        "metrics": 9090,
        "health": 8080,
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Ready only while it is the active peer (a standby's registry is empty).
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    strategy = one(objects, "Deployment", f"{FULLNAME}-operator")["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_scheduling_values_reach_the_pods() -> None:
    spread = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
        }
    ]
    scheduling = {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {}},
        "topologySpreadConstraints": spread,
    }
    values = {
        "global": {"imagePullSecrets": [{"name": "regcred"}]},
        "operator": {**scheduling, "priorityClassName": "system-cluster-critical"},
        "gateway": scheduling,
    }
    objects = render(values)
    for component in ("operator", "gateway"):
        deployment = one(objects, "Deployment", f"{FULLNAME}-{component}")
        spec = deployment["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == scheduling["nodeSelector"]
        assert spec["tolerations"] == scheduling["tolerations"]
        assert spec["affinity"] == scheduling["affinity"]
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        (constraint,) = spec["topologySpreadConstraints"]
        # Without a labelSelector the constraint spreads this component's own pods.
        assert (
            constraint["labelSelector"]["matchLabels"]
            == deployment["spec"]["selector"]["matchLabels"]
        )
    operator = one(objects, "Deployment", f"{FULLNAME}-operator")
    assert operator["spec"]["template"]["spec"]["priorityClassName"] == "system-cluster-critical"


def test_disruption_budgets_select_their_pods() -> None:
    objects = render({})
    for component in ("operator", "gateway"):
        pdb = one(objects, "PodDisruptionBudget", f"{FULLNAME}-{component}")
        deployment = one(objects, "Deployment", f"{FULLNAME}-{component}")
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    off = {"enabled": False, "maxUnavailable": 1}
    values = {"operator": {"podDisruptionBudget": off}, "gateway": {"podDisruptionBudget": off}}
    assert find(render(values), "PodDisruptionBudget") == []


# --- RBAC ------------------------------------------------------------------------------------


def manifest_rules(files: list[str], kind: str) -> dict[str, list[Obj]]:
    """{name: rules} of the ``kind`` roles in manifests/rbac/<files>."""
    return {
        doc["metadata"]["name"]: doc["rules"]
        for name in files
        for doc in load_yaml(RBAC / name)
        if doc["kind"] == kind
    }


def rbac_files(cell: Cell) -> list[str]:
    """The manifests/rbac files an install like ``cell`` applies (docs/operator.md)."""
    files = ["operator.yaml", "operator-mesh-ca.yaml"]
    if cell.provider == "appmesh":
        files.append("operator-appmesh.yaml")
    if not cell.cert_manager:  # webhooks on: the operator manages its certificate
        files.append("operator-webhook-certs.yaml")
    return files


@pytest.mark.parametrize("cell", MATRIX, ids=CELL_IDS)
def test_rbac_has_no_wildcards(cell: Cell) -> None:
    objects = render(cell.values())
    for role in [*find(objects, "ClusterRole"), *find(objects, "Role")]:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert all("*" not in item for item in rule.get(key, [])), rule
            assert "nonResourceURLs" not in rule


@pytest.mark.parametrize("cell", MATRIX, ids=CELL_IDS)
@pytest.mark.parametrize("kind", ["ClusterRole", "Role"])
def test_roles_equal_manifests(cell: Cell, kind: str) -> None:
    """With release name grpcmesh, the chart's roles are manifests/rbac's: names and rules."""
    objects = render(cell.values())
    chart = {r["metadata"]["name"]: r["rules"] for r in find(objects, kind)}
    assert chart == manifest_rules(rbac_files(cell), kind)


@pytest.mark.parametrize("cell", MATRIX, ids=CELL_IDS)
def test_every_role_is_bound_to_the_operator(cell: Cell) -> None:
    objects = render(cell.values())
    account = {"kind": "ServiceAccount", "name": f"{FULLNAME}-operator", "namespace": NAMESPACE}
    assert one(objects, "ServiceAccount", account["name"])
    for role_kind, binding_kind in (("ClusterRole", "ClusterRoleBinding"), ("Role", "RoleBinding")):
        bindings = find(objects, binding_kind)
        for binding in bindings:
            assert binding["subjects"] == [account]
            assert binding["roleRef"]["kind"] == role_kind
        roles = {r["metadata"]["name"] for r in find(objects, role_kind)}
        assert {b["roleRef"]["name"] for b in bindings} == roles


# --- CRDs ------------------------------------------------------------------------------------


def test_chart_crds_are_exactly_the_manifests_crds() -> None:
    # Their bytes are kept equal by scripts/copies.py (tests/unit/test_package_data.py).
    chart = {p.name for p in (CHART / "crds").glob("*.yaml")}
    assert chart == {p.name for p in (REPO / "manifests" / "crds").glob("*.yaml")}
    assert {"meshservices.grpcmesh.io.yaml", "clusterkopfpeerings.kopf.dev.yaml"} <= chart


def test_crds_validate() -> None:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in load_yaml(path):
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(crd, version, strict=True)
            spec = crd["spec"]
            assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"


def test_kopf_peering_crd() -> None:
    (crd,) = load_yaml(CHART / "crds" / "clusterkopfpeerings.kopf.dev.yaml")
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (
        "kopf.dev",
        "Cluster",
        "ClusterKopfPeering",
    )
    (version,) = spec["versions"]
    assert version["name"] == "v1" and version["served"] and version["storage"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    # kopf records its peers in status; the schema must keep whatever it writes.
    peering = one(render({}), "ClusterKopfPeering", FULLNAME)
    peering["status"] = {"pod-1": {"priority": 7, "lifetime": 60, "lastseen": "2026-01-01"}}
    assert crd_errors(peering) == []


# --- webhooks --------------------------------------------------------------------------------


def _constant(node: ast.expr) -> Any:
    """A literal, where names are the constants of k8s.names (as handlers.py imports them)."""
    if isinstance(node, ast.Name):
        return getattr(k8s_names, node.id)
    if isinstance(node, ast.Dict):
        return {
            _constant(k): _constant(v) for k, v in zip(node.keys, node.values, strict=True) if k
        }
    if isinstance(node, ast.List):
        return [_constant(e) for e in node.elts]
    return ast.literal_eval(node)


def _kopf_handlers() -> dict[str, dict[str, Any]]:
    """kopf.on.validate / kopf.on.mutate decorators in handlers.py: kind -> their keywords."""
    found: dict[str, dict[str, Any]] = {}
    for node in ast.walk(ast.parse(HANDLERS.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr in ("validate", "mutate") and ast.unparse(node.func.value) == "kopf.on":
            keywords = {
                k.arg: _constant(k.value)
                for k in node.keywords
                if k.arg in ("id", "operations", "labels")
            }
            args = [ast.unparse(a) for a in node.args]
            found[node.func.attr] = {**keywords, "args": args}
    return found


def test_webhooks_match_the_kopf_handlers() -> None:
    handlers = _kopf_handlers()
    objects = render({})
    (validating,) = one(objects, "ValidatingWebhookConfiguration", FULLNAME)["webhooks"]
    (mutating,) = one(objects, "MutatingWebhookConfiguration", FULLNAME)["webhooks"]
    for webhook, handler in ((validating, handlers["validate"]), (mutating, handlers["mutate"])):
        assert webhook["clientConfig"]["service"] == {
            "name": f"{FULLNAME}-control",
            "namespace": NAMESPACE,
            "path": f"/{handler['id']}",
            "port": 443,
        }
        (rule,) = webhook["rules"]
        assert rule["operations"] == handler["operations"]
        assert webhook["sideEffects"] == "None"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["failurePolicy"] == "Fail"
        assert webhook["timeoutSeconds"] == 10
        assert webhook["namespaceSelector"] == {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": ["kube-system", NAMESPACE],
                }
            ]
        }
    assert {
        validating["clientConfig"]["service"]["path"],
        mutating["clientConfig"]["service"]["path"],
    } == {
        "/meshservices",
        "/inject",
    }
    assert "DELETE" not in validating["rules"][0]["operations"]
    assert validating["rules"][0]["resources"] == ["meshservices"]
    assert mutating["rules"][0]["resources"] == ["pods"]
    assert mutating["objectSelector"] == {"matchLabels": handlers["mutate"]["labels"]}
    assert mutating["objectSelector"] == {"matchLabels": {"grpcmesh.io/inject": "true"}}


def test_webhook_values() -> None:
    objects = render({"webhooks": {"failurePolicy": "Ignore", "timeoutSeconds": 5}})
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        (webhook,) = one(objects, kind, FULLNAME)["webhooks"]
        assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Ignore", 5)
    off = render({"webhooks": {"enabled": False}})
    assert find(off, "ValidatingWebhookConfiguration") == []
    assert find(off, "MutatingWebhookConfiguration") == []
    # Only the mesh CA's Role is left: webhooks off take no Secret of their own.
    assert [r["metadata"]["name"] for r in find(off, "Role")] == [f"{FULLNAME}-operator-mesh-ca"]
    env = operator_env(off)
    assert not {k for k in env if k.startswith("GRPCMESH_WEBHOOK")}
    ports = one(off, "Service", f"{FULLNAME}-control")["spec"]["ports"]
    assert "https-webhook" not in {p["name"] for p in ports}


# --- README ----------------------------------------------------------------------------------


def _leaf_keys(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _leaf_keys(value, f"{path}.")
        else:
            yield path


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    table = re.findall(r"^\|\s*`([^`]+)`\s*\|", (CHART / "README.md").read_text(), re.MULTILINE)
    leaves = set(_leaf_keys(values))
    assert leaves - set(table) == set(), "undocumented values"
    assert set(table) - leaves == set(), "documented values that do not exist"
    assert len(table) == len(set(table)), "a value is documented twice"
