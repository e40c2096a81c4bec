"""Bounded inputs: YAML alias bombs, deep nesting and oversized documents are refused before
validation, quickly and naming the source; labels and annotations are checked as the API server
checks them. (Before the bounds, the 1.4 KB bomb below held the control plane past 4.8 GB.)"""

from __future__ import annotations

import time

import pytest

from grpcmesh_control.mesh.errors import InvalidResource
from grpcmesh_control.mesh.model import parse_mesh_service, parse_mesh_services_yaml
from grpcmesh_control.mesh.model.bounds import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_NODES,
    bounds_error,
    load_yaml_documents,
)

HEAD = """\
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata:
  name: echo
"""
SPEC = """\
spec:
  grpc: {port: 9000, services: [test.v1.Echo]}
"""
REFUSAL_SECONDS = 2.0
"""Generous for a 2-core machine shared with other test runs; the checks take milliseconds."""


def alias_bomb(indent: str, levels: int = 9) -> str:
    """The "billion laughs": ten aliases of the level below at each level, 10**levels leaves,
    about 1.4 KB of YAML at 9 levels."""
    lines = [f'{indent}l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        aliases = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"{indent}l{level}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def refusal(text: str) -> str:
    started = time.monotonic()
    with pytest.raises(InvalidResource) as caught:
        parse_mesh_services_yaml(text, source="bomb.yaml")
    assert time.monotonic() - started < REFUSAL_SECONDS
    return str(caught.value)


@pytest.mark.timeout(30)
def test_an_alias_bomb_in_spec_config_is_refused_quickly() -> None:
    text = HEAD + SPEC + "  config:\n" + alias_bomb("    ")
    assert len(text) < 1600
    message = refusal(text)
    assert message.startswith("bomb.yaml: ")
    assert f"more than {MAX_NODES} values once YAML aliases are expanded" in message


@pytest.mark.timeout(30)
def test_an_alias_bomb_in_metadata_labels_is_refused_quickly() -> None:
    text = HEAD + "  labels:\n" + alias_bomb("    ") + SPEC
    assert f"more than {MAX_NODES} values" in refusal(text)


@pytest.mark.timeout(30)
def test_a_self_referencing_alias_is_refused() -> None:
    text = HEAD + "  labels: &loop {again: *loop}\n" + SPEC
    assert "levels deep" in refusal(text)  # a loop is endless nesting


def test_aliases_within_the_bounds_still_load() -> None:
    text = HEAD + "  labels: &labels {team: shop}\n  annotations: *labels\n" + SPEC
    (svc,) = parse_mesh_services_yaml(text, source="echo.yaml")
    assert svc.name == "echo"


@pytest.mark.timeout(30)
def test_deep_nesting_is_refused() -> None:
    for depth in (500, 100_000):  # past our bound; past the parser's and Python's limits too
        text = HEAD + SPEC + "  config: " + "[" * depth + "]" * depth + "\n"
        assert len(text) < MAX_DOCUMENT_BYTES
        assert "nest" in refusal(text), depth
    assert f"nested more than {MAX_DEPTH} levels deep" in refusal(
        HEAD + SPEC + "  config: " + "[" * 500 + "]" * 500 + "\n"
    )


def test_an_oversized_text_is_refused_before_parsing() -> None:
    text = HEAD + SPEC + "# " + "x" * MAX_DOCUMENT_BYTES + "\n"
    assert f"at most {MAX_DOCUMENT_BYTES} are accepted" in refusal(text)


def test_each_document_of_a_stream_is_bounded_and_named() -> None:
    good = HEAD + SPEC
    bad = HEAD + SPEC + "  config:\n" + alias_bomb("    ")
    with pytest.raises(InvalidResource) as caught:
        load_yaml_documents(good + "---\n" + bad, source="two.yaml")
    assert str(caught.value).startswith("two.yaml, document 2: ")


def test_parsed_documents_are_bounded_too() -> None:
    # What the admission webhook gets: JSON, already decoded, no aliases but maybe huge.
    wide = {"metadata": {"name": "echo"}, "spec": {"config": {str(i): "x" for i in range(30_000)}}}
    with pytest.raises(InvalidResource) as caught:
        parse_mesh_service(wide, source="review")
    assert f"more than {MAX_NODES} values" in str(caught.value)
    deep: object = "leaf"
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    error = bounds_error({"spec": deep})
    assert error is not None and "levels deep" in error.reason


# --- labels and annotations, as Kubernetes checks them ---------------------------------------


@pytest.mark.parametrize(
    ("metadata", "field", "words"),
    [
        ("labels: {team: " + "x" * 64 + "}", "metadata.labels['team']", "at most 63"),
        ("labels: {team: -shop}", "metadata.labels['team']", "alphanumeric"),
        ("labels: {team: 7}", "metadata.labels['team']", "is not a string"),
        ("labels: {'bad key': x}", "metadata.labels['bad key']", "key name"),
        ("labels: {Example.com/team: x}", "metadata.labels['Example.com/team']", "key prefix"),
        ("labels: {'a/b/c': x}", "metadata.labels['a/b/c']", "DNS subdomain"),
        ("labels: [team]", "metadata.labels", "mapping of strings"),
        ("annotations: {'': x}", "metadata.annotations['']", "key name"),
        ("annotations: {note: 3}", "metadata.annotations['note']", "is not a string"),
    ],
)
def test_bad_labels_and_annotations_name_the_field(metadata: str, field: str, words: str) -> None:
    text = HEAD + "  " + metadata + "\n" + SPEC
    with pytest.raises(InvalidResource) as caught:
        parse_mesh_services_yaml(text, source="echo.yaml")
    (problem,) = caught.value.errors
    assert problem.path == field, problem
    assert words in problem.reason


def test_good_labels_and_annotations_are_accepted() -> None:
    text = (
        HEAD
        + "  labels: {app.kubernetes.io/name: echo, team: '', tier: web_1.a}\n"
        + "  annotations: {example.com/note: 'anything at all: even spaces', x: ''}\n"
        + SPEC
    )
    (svc,) = parse_mesh_services_yaml(text, source="echo.yaml")
    assert svc.name == "echo"


def test_annotations_are_bounded_in_total() -> None:
    values = {f"k{i}": "v" * 100_000 for i in range(3)}  # 300 KB > 256 KiB
    grpc = {"port": 9000, "services": ["test.v1.Echo"]}
    doc = {"metadata": {"name": "echo", "annotations": values}, "spec": {"grpc": grpc}}
    with pytest.raises(InvalidResource) as caught:
        parse_mesh_service(doc, source="echo.yaml")
    assert any(
        p.path == "metadata.annotations" and "at most 262144" in p.reason
        for p in caught.value.errors
    ), caught.value.errors
