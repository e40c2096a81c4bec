"""The Kubernetes guides stay true: every repository path they name exists, every `make`
target is in the Makefile, every skaffold profile is in skaffold.yaml, and every `--set` key is
a chart value (values.yaml, or values.schema.json below a free-form default such as `{}`)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.chart.chart import chart

from .checks import CHART, REPO, chart_values, skaffold_config

DOCS = ("docs/install-eks.md", "docs/develop-kind.md")
_FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(
    r"(?<![\w./-])((?:charts|docs|manifests|operator|scripts|services|tests)/[\w./<>$-]*)"
)
_LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")
_SET = re.compile(r"--set(?:-string)?[ =]([^=\s]+)=")
_PROFILE = re.compile(r"(?:-p|--profile)[ =]([\w-]+)")
_MAKE = re.compile(r"\bmake ([a-z][a-z-]*)")


def code(text: str) -> str:
    """Fenced blocks and inline code spans: what a reader copies."""
    blocks = _FENCE.findall(text)
    prose = _FENCE.sub("", text)
    return "\n".join([*blocks, *_INLINE.findall(prose)])


def doc(path: str) -> str:
    return (REPO / path).read_text()


def commands(text: str) -> list[str]:
    """Shell lines with their continuations joined."""
    return code(text).replace("\\\n", " ").splitlines()


@pytest.mark.parametrize("path", DOCS)
def test_named_paths_exist(path: str) -> None:
    text = doc(path)
    named = {m.rstrip(".,:") for m in _PATH.findall(text)}
    named = {p for p in named if not re.search(r"[<>$]", p)}  # placeholders like <name>
    assert named, f"{path} names no repository paths?"
    for name in sorted(named):
        assert (REPO / name).exists(), f"{path}: {name} does not exist"
    for link in _LINK.findall(text):
        if "://" not in link:
            assert (REPO / path).parent.joinpath(link).resolve().exists(), f"{path}: {link}"


@pytest.mark.parametrize("path", DOCS)
def test_make_targets_exist(path: str) -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    for target in _MAKE.findall(doc(path)):
        assert target in targets, f"{path}: make {target} is not a Makefile target"


@pytest.mark.parametrize("path", DOCS)
def test_skaffold_profiles_exist(path: str) -> None:
    profiles = {p["name"] for p in skaffold_config()["profiles"]}
    used = [
        name
        for line in commands(doc(path))
        if line.lstrip().startswith("skaffold")
        for name in _PROFILE.findall(line)
    ]
    used += re.findall(r"profile `([\w-]+)`", doc(path))
    assert used, f"{path} names no skaffold profile"
    for name in used:
        assert name in profiles, f"{path}: skaffold profile {name!r} does not exist"


def value_key_exists(key: str) -> bool:
    """``a.b[0].c`` against values.yaml; below an empty map or list default (free-form, like
    annotations or issuerRef), against values.schema.json."""
    parts = [p for p in re.split(r"\.|\[\d+\]\.?", key) if p]
    node: Any = chart_values()
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        if node in ({}, []):
            return schema_allows(parts)
        return False
    return not isinstance(node, dict)  # a whole map is not one --set value


def schema_allows(parts: list[str]) -> bool:
    node: Any = chart().schema
    assert node is not None, "the chart ships values.schema.json"
    for part in parts:
        while "items" in node:
            node = node["items"]
        properties = node.get("properties", {})
        if part not in properties:
            # Only a free-form map (e.g. annotations) takes keys its schema does not list.
            return node.get("additionalProperties") not in (None, False)
        node = properties[part]
    return True


@pytest.mark.parametrize("path", DOCS)
def test_set_keys_are_chart_values(path: str) -> None:
    keys = [k for line in commands(doc(path)) for k in _SET.findall(line)]
    for key in keys:
        assert value_key_exists(key), f"{path}: --set {key}: no such value in {CHART.name}"


def test_the_checks_catch_mistakes() -> None:
    assert value_key_exists("monitoring.dashboards.namespace")
    assert value_key_exists("webhooks.certManager.issuerRef.name")
    assert value_key_exists("global.imagePullSecrets[0].name")
    assert not value_key_exists("monitoring.dashboard.enabled")
    assert not value_key_exists("webhooks.certManager.issuerRef.nmae")
    assert not value_key_exists("gateway.service.annotations")  # a map, not a value


def test_readme_links_both_guides() -> None:
    readme = (REPO / "README.md").read_text()
    for path in DOCS:
        assert f"({path})" in readme, f"README.md does not link {path}"
