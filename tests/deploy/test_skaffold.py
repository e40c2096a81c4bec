"""skaffold.yaml: valid for skaffold v4beta14, every artifact built from files that exist and
deployed by the chart, every image we publish built by an artifact, and profiles that override
whole sections (never a JSON patch by list index)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.kube_schemas import CONTRACTS

from .checks import (
    NAMESPACE,
    OUR_REGISTRY,
    RELEASE,
    REPO,
    artifacts,
    deep_merge,
    dockerfiles,
    expand,
    images,
    render,
    sanitized,
    set_values,
    skaffold_config,
)

ARTIFACTS = (
    "grpcmesh-operator",
    "grpcmesh-catalog",
    "grpcmesh-inventory",
    "grpcmesh-payments",
    "grpcmesh-orders",
)
PROFILES = ("kind", "eks")


def fake_build(name: str) -> dict[str, str]:
    """What skaffold computes for a built artifact, with a registry from --default-repo."""
    key = sanitized(name)
    return {
        f"IMAGE_REPO_{key}": f"registry.example/dev/{name}",
        f"IMAGE_TAG_{key}": f"v0-{name[-4:]}",
    }


def built_ref(name: str) -> str:
    env = fake_build(name)
    key = sanitized(name)
    return f"{env[f'IMAGE_REPO_{key}']}:{env[f'IMAGE_TAG_{key}']}"


def the_release(config: dict[str, Any]) -> dict[str, Any]:
    (release,) = config["deploy"]["helm"]["releases"]
    assert isinstance(release, dict)
    return release


def profile(name: str) -> dict[str, Any]:
    (found,) = [p for p in skaffold_config()["profiles"] if p["name"] == name]
    assert isinstance(found, dict)
    return found


def release_values(release: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The values helm gets from skaffold for ``release``: its values files, then its
    setValueTemplates expanded with ``env``."""
    values: dict[str, Any] = {}
    for path in release.get("valuesFiles", []):
        values = deep_merge(values, yaml.safe_load((REPO / expand(path, env)).read_text()))
    flat = {k: expand(str(v), env) for k, v in release.get("setValueTemplates", {}).items()}
    return deep_merge(values, set_values(flat))


def all_builds() -> dict[str, str]:
    env: dict[str, str] = {}
    for name in ARTIFACTS:
        env |= fake_build(name)
    return env


def test_validates_against_the_published_schema() -> None:
    schema = json.loads((CONTRACTS / "skaffold" / "v4beta14.json").read_text())
    config = skaffold_config()
    assert config["apiVersion"] == "skaffold/v4beta14"
    assert config["kind"] == "Config"
    # The schema's root is anyOf [SkaffoldConfig]: validate against that definition directly,
    # so a failure names the offending field instead of "not valid under any of the schemas".
    (root,) = schema["anyOf"]
    validator = jsonschema.Draft7Validator(
        {"$ref": root["$ref"], "definitions": schema["definitions"]}
    )
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_one_artifact_per_image_each_with_its_own_dockerfile() -> None:
    assert tuple(a["image"] for a in artifacts()) == ARTIFACTS
    for artifact in artifacts():
        context = REPO / artifact.get("context", ".")
        assert context.resolve() == REPO, f"{artifact['image']}: build context is the repo root"
    files = dockerfiles()
    assert len(set(files.values())) == len(files)
    for name, path in files.items():
        assert path.is_file(), f"{name}: {path} does not exist"


def test_release_installs_the_chart_into_grpcmesh_system() -> None:
    release = the_release(skaffold_config())
    assert release["name"] == RELEASE
    assert release["namespace"] == NAMESPACE
    assert release["createNamespace"] is True
    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()


@pytest.mark.parametrize("profile_name", [None, *PROFILES])
def test_every_artifact_is_deployed_and_every_image_of_ours_is_built(
    profile_name: str | None,
) -> None:
    config = skaffold_config() if profile_name is None else profile(profile_name)
    release = the_release(config)
    rendered = images(render(release_values(release, all_builds())))
    for name in ARTIFACTS:
        assert built_ref(name) in rendered, f"{name} is built but no rendered pod runs it"
    ours = [ref for ref in rendered if ref.startswith(f"{OUR_REGISTRY}/")]
    assert not ours, f"chart images not replaced by a skaffold build: {ours}"


def test_every_image_the_chart_publishes_is_an_artifact() -> None:
    """With chart defaults, each image from our registry is one skaffold builds."""
    rendered = images(render({}))
    ours = {ref.split("/")[-1].split(":")[0] for ref in rendered if ref.startswith(OUR_REGISTRY)}
    assert ours == set(ARTIFACTS)


def test_provider_is_chosen_by_environment() -> None:
    release = the_release(skaffold_config())
    native = release_values(release, all_builds())
    appmesh = release_values(release, all_builds() | {"GRPCMESH_PROVIDER": "appmesh"})
    assert (native["provider"], appmesh["provider"]) == ("native", "appmesh")


def test_profiles_reuse_the_release_and_only_add_values_files() -> None:
    base = the_release(skaffold_config())
    for name in PROFILES:
        release = the_release(profile(name))
        extra = {k: v for k, v in release.items() if k not in base}
        assert set(extra) == {"valuesFiles"}, name
        assert {k: release[k] for k in base} == base, f"{name} changed the base release"
        for path in release["valuesFiles"]:
            assert (REPO / path).is_file(), path


def test_kind_profile_is_local_and_small() -> None:
    kind = profile("kind")
    assert kind["activation"] == [{"kubeContext": "kind-grpcmesh"}]
    assert kind["build"]["local"]["push"] is False
    assert "artifacts" not in kind["build"], "a profile must not redefine the artifacts"
    values = release_values(the_release(kind), all_builds())
    assert values["operator"]["replicas"] == values["gateway"]["replicas"] == 1
    services = values["referenceServices"]
    assert all(services[s]["replicas"] == 1 for s in ("catalog", "inventory", "payments", "orders"))
    monitoring = values["monitoring"]
    assert not any(monitoring[k]["enabled"] for k in monitoring if k != "labels")


def test_eks_profile_pushes() -> None:
    eks = profile("eks")
    assert eks["build"]["local"]["push"] is True
    assert "artifacts" not in eks["build"]
    values = release_values(the_release(eks), all_builds())
    assert values["gateway"]["service"]["type"] == "LoadBalancer"


def test_no_json_patches_at_all() -> None:
    """Profiles override whole sections; a patch by list index breaks silently when the list
    is reordered."""
    text = (REPO / "skaffold.yaml").read_text()
    assert all("patches" not in p for p in skaffold_config()["profiles"])
    assert "/artifacts/" not in text and "/releases/" not in text


def test_port_forwards_reach_the_gateway_and_monitoring() -> None:
    forwards = skaffold_config()["portForward"]
    by_name = {f["resourceName"]: f for f in forwards}
    assert set(by_name) == {
        "grpcmesh-gateway",
        "kube-prometheus-stack-grafana",
        "kube-prometheus-stack-prometheus",
    }
    gateway = by_name["grpcmesh-gateway"]
    services = {
        o["metadata"]["name"]: o
        for o in render(release_values(the_release(skaffold_config()), all_builds()))
        if o["kind"] == "Service"
    }
    assert gateway["namespace"] == NAMESPACE
    assert gateway["port"] in [
        p["port"] for p in services[gateway["resourceName"]]["spec"]["ports"]
    ]
    assert expand(by_name["kube-prometheus-stack-grafana"]["namespace"], {}) == "monitoring"
    assert len({f["localPort"] for f in forwards}) == len(forwards)
