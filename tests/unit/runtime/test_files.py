"""Local-mode sources: the resources directory as a set and endpoints.json. Every error names
the file, the resource (when there is one) and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from grpcmesh_control.local.sources import (
    ResourceSet,
    parse_endpoints,
    parse_resource_files,
    read_endpoints,
    read_resource_files,
)
from grpcmesh_control.mesh.errors import InvalidResource, InvalidResourceSet
from grpcmesh_control.mesh.model import Endpoint, MethodCatalog

ECHO = b"""
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {name: echo}
spec:
  grpc: {port: 9000, services: [test.v1.Echo]}
"""


def errors_of(files: dict[str, bytes], catalog: MethodCatalog | None = None) -> list[str]:
    with pytest.raises(InvalidResourceSet) as caught:
        parse_resource_files(files, catalog=catalog)
    return [str(problem) for problem in caught.value.problems]


# --- accepted ---------------------------------------------------------------------------------


def test_the_reference_resources_load_in_file_order(examples: ResourceSet) -> None:
    assert [(e.file, e.service.name) for e in examples.entries] == [
        ("catalog.yaml", "catalog"),
        ("inventory.yaml", "inventory"),
        ("orders.yaml", "orders"),
        ("payments.yaml", "payments"),
    ]
    assert examples.file_of("default/orders") == "orders.yaml"
    assert examples.file_of("default/shipping") is None


def test_multi_document_files_and_empty_documents(
    example_files: dict[str, bytes], catalog: MethodCatalog
) -> None:
    bundle = b"\n---\n".join(example_files[name] for name in sorted(example_files)) + b"\n---\n"
    loaded = parse_resource_files({"mesh.yaml": bundle}, catalog=catalog)
    assert [e.service.name for e in loaded.entries] == [
        "catalog",
        "inventory",
        "orders",
        "payments",
    ]
    assert loaded.entries[1].source == "mesh.yaml, document 2"
    assert {e.file for e in loaded.entries} == {"mesh.yaml"}


def test_external_backends_need_no_mesh_service() -> None:
    quotes = ECHO.replace(b"name: echo", b"name: quotes") + (
        b"  backends:\n    - name: fx\n      external: {host: fx.example.com, port: 443}\n"
    )
    loaded = parse_resource_files({"quotes.yaml": quotes})
    assert loaded.services[0].backends[0].external is not None


def test_read_skips_hidden_and_other_files(tmp_path: Path) -> None:
    (tmp_path / "echo.yaml").write_bytes(ECHO)
    (tmp_path / ".echo.yaml.123.tmp").write_bytes(b"half a file")
    (tmp_path / ".hidden.yaml").write_bytes(b"{")
    (tmp_path / "notes.txt").write_text("not a resource")
    (tmp_path / "dir.yaml").mkdir()
    assert read_resource_files(tmp_path) == {"echo.yaml": ECHO}
    assert read_resource_files(tmp_path / "missing") == {}


# --- refused: one document ----------------------------------------------------------------------


def test_a_document_error_names_file_resource_and_field(
    example_files: dict[str, bytes], catalog: MethodCatalog
) -> None:
    files = dict(example_files)
    files["payments.yaml"] = files["payments.yaml"].replace(b"weight: 10", b"weight: 20")
    files["orders.yaml"] = files["orders.yaml"].replace(b"attempts: 2", b"attempts: -1")
    assert errors_of(files, catalog) == [
        "orders.yaml (MeshService default/orders): spec.trafficPolicy.retries.attempts: "
        "-1 is less than the minimum of 0",
        "payments.yaml (MeshService default/payments): spec.versions: weights sum to 110, "
        "must be 100",
    ]


def test_the_document_of_a_multi_document_file_is_named() -> None:
    broken = ECHO.replace(b"name: echo", b"name: Echo")
    (problem,) = errors_of({"all.yaml": ECHO + b"---\n" + broken})
    assert problem.startswith("all.yaml, document 2 (MeshService default/Echo): metadata.name:")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"spec: [", "bad.yaml: not valid YAML"),
        (b"\xff\xfe", "bad.yaml: not UTF-8 text"),
        (b"- just\n- a list\n", "bad.yaml: a MeshService document must be a mapping"),
    ],
)
def test_unreadable_files_are_named(content: bytes, expected: str) -> None:
    (problem,) = errors_of({"bad.yaml": content, "echo.yaml": ECHO})
    assert problem.startswith(expected)


# --- refused: the set ---------------------------------------------------------------------------


def test_an_unknown_backend_names_the_field(
    example_files: dict[str, bytes], catalog: MethodCatalog
) -> None:
    files = dict(example_files)
    files["orders.yaml"] = example_files["orders.yaml"].replace(
        b"    - name: payments\n", b"    - name: payments\n    - name: shipping\n"
    )
    assert errors_of(files, catalog) == [
        "orders.yaml (MeshService default/orders): spec.backends[3].name: "
        "no MeshService shipping in the mesh"
    ]


def test_removing_a_backend_service_breaks_its_callers(example_files: dict[str, bytes]) -> None:
    files = {name: data for name, data in example_files.items() if name != "payments.yaml"}
    assert errors_of(files) == [
        "orders.yaml (MeshService default/orders): spec.backends[2].name: "
        "no MeshService payments in the mesh"
    ]


def test_duplicate_names_across_files_and_namespaces(example_files: dict[str, bytes]) -> None:
    files = dict(example_files)
    files["zz-copy.yaml"] = example_files["catalog.yaml"]
    files["zz-staging.yaml"] = example_files["catalog.yaml"].replace(
        b"  name: catalog\n", b"  name: catalog\n  namespace: staging\n"
    )
    assert errors_of(files) == [
        "zz-copy.yaml (MeshService default/catalog): metadata.name: 'catalog' is already "
        "defined in catalog.yaml (names are unique in the mesh)",
        "zz-staging.yaml (MeshService staging/catalog): metadata.name: 'catalog' is already "
        "used by default/catalog in catalog.yaml (names are unique in the mesh)",
    ]


def test_a_grpc_service_served_twice(example_files: dict[str, bytes]) -> None:
    files = dict(example_files)
    files["next.yaml"] = example_files["catalog.yaml"].replace(
        b"name: catalog\n", b"name: catalog-next\n"
    )
    assert errors_of(files) == [
        "next.yaml (MeshService default/catalog-next): spec.grpc.services[0]: "
        "grpcmesh.shop.v1.CatalogService is already served by MeshService default/catalog "
        "(catalog.yaml)"
    ]


def test_every_failing_file_is_reported_at_once(example_files: dict[str, bytes]) -> None:
    files = dict(example_files)
    files["a.yaml"] = b"{"
    files["b.yaml"] = ECHO.replace(b"port: 9000", b"port: 0")
    problems = errors_of(files)
    assert [p.split(" ")[0].rstrip(":") for p in problems] == ["a.yaml", "b.yaml"]


# --- endpoints ---------------------------------------------------------------------------------


def endpoints_json(*items: dict[str, Any]) -> bytes:
    return json.dumps({"endpoints": list(items)}).encode()


def test_endpoints_by_service_with_defaults() -> None:
    content = endpoints_json(
        {
            "service": "payments",
            "version": "v2",
            "replica": "v2-0",
            "address": "127.0.0.1",
            "port": 41001,
            "ready": False,
        },
        {"service": "payments", "address": "127.0.0.1", "port": 41002},
        {"service": "catalog", "address": "::1", "port": 41003, "ready": True},
    )
    assert parse_endpoints(content) == {
        "catalog": (Endpoint("::1", 41003, "v1", ready=True),),
        "payments": (
            Endpoint("127.0.0.1", 41001, "v2", ready=False),
            Endpoint("127.0.0.1", 41002, "v1", ready=True),
        ),
    }
    assert parse_endpoints(endpoints_json()) == {}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"address": "127.0.0.1", "port": 1}, "endpoints[0].service: required field is missing"),
        ({"service": "Pay", "address": "127.0.0.1", "port": 1}, "endpoints[0].service: 'Pay'"),
        ({"service": "p", "address": "localhost", "port": 1}, "endpoints[0].address: 'localhost'"),
        ({"service": "p", "address": "127.0.0.1", "port": 0}, "endpoints[0].port: 0 is not"),
        ({"service": "p", "address": "127.0.0.1", "port": "80"}, "endpoints[0].port: '80'"),
        ({"service": "p", "address": "127.0.0.1", "port": True}, "endpoints[0].port: True"),
        ({"service": "p", "address": "127.0.0.1", "port": 1, "ready": "yes"}, ".ready: 'yes'"),
        ({"service": "p", "address": "127.0.0.1", "port": 1, "redy": False}, ".redy: unknown"),
        ({"service": "p", "address": "127.0.0.1", "port": 1, "version": ""}, ".version: ''"),
    ],
)
def test_endpoint_errors_name_the_file_and_field(item: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_endpoints(endpoints_json(item))
    message = str(caught.value)
    assert message.startswith("endpoints.json: ")
    assert expected in message


def test_duplicate_endpoints_are_refused() -> None:
    one = {"service": "p", "address": "127.0.0.1", "port": 5}
    with pytest.raises(InvalidResource, match=r"endpoints\[1\]: 127.0.0.1:5 of p is already"):
        parse_endpoints(endpoints_json(one, one))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{", "endpoints.json: not valid JSON"),
        (b"[]", "endpoints.json: endpoints: must be a list"),
        (b'{"endpoints": {}}', "endpoints.json: endpoints: must be a list"),
        (b'{"endpoints": [1]}', "endpoints.json: endpoints[0]: must be an object"),
    ],
)
def test_malformed_endpoint_files(content: bytes, expected: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_endpoints(content)
    assert str(caught.value).startswith(expected)


def test_a_missing_endpoints_file_is_not_an_error(tmp_path: Path) -> None:
    assert read_endpoints(tmp_path / "endpoints.json") is None
