"""The chart ships the reference protos' descriptor set, and the operator's catalog from it is
the one local mode builds from the generated code."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from grpcmesh_control.cluster.controller.descriptors import (
    DESCRIPTOR_SET_LABEL,
    catalog_of_config_maps,
)
from grpcmesh_control.mesh.catalogs import load_catalog
from tests.chart.chart import CHART, REPO, find, render

SET = CHART / "files" / "descriptors" / "grpcmesh.shop.v1.binpb"


def test_the_committed_descriptor_set_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.binpb"
    protos = sorted(str(p.relative_to(REPO)) for p in (REPO / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--descriptor_set_out={fresh}",
            *protos,
        ],
        cwd=REPO,
        check=True,
    )
    assert SET.read_bytes() == fresh.read_bytes(), "run `make chart-assets`"


def test_the_rendered_config_map_gives_the_reference_catalog() -> None:
    maps = [
        cm
        for cm in find(render({}), "ConfigMap")
        if DESCRIPTOR_SET_LABEL in cm["metadata"].get("labels", {})
    ]
    assert [cm["metadata"]["name"] for cm in maps] == ["grpcmesh-shop-descriptors"]
    catalog, problems = catalog_of_config_maps(maps)
    assert problems == ()
    assert catalog == load_catalog()
    assert base64.b64decode(maps[0]["binaryData"]["grpcmesh.shop.v1.binpb"]) == SET.read_bytes()


def test_no_descriptor_set_without_the_reference_services() -> None:
    objects = render({"referenceServices": {"enabled": False}})
    labelled = [
        cm
        for cm in find(objects, "ConfigMap")
        if DESCRIPTOR_SET_LABEL in cm["metadata"].get("labels", {})
    ]
    assert labelled == []
