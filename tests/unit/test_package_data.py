"""What the package reads at run time ships inside it, as copies of the files users see.

The operator image and an installed wheel have no checkout: the CRD schema and the reference
resources come from package data (importlib.resources). The copies must stay byte-identical to
manifests/ (the published form), or the local validator and the API server would disagree.
"""

from __future__ import annotations

from importlib.resources import files

from grpcmesh_control.model.schema import CRD_PATH
from tests.shared import REPO


def test_the_packaged_crd_is_the_published_one() -> None:
    published = REPO / "manifests" / "crds" / "meshservices.grpcmesh.io.yaml"
    assert CRD_PATH.read_bytes() == published.read_bytes(), (
        "copy manifests/crds/meshservices.grpcmesh.io.yaml to "
        "operator/grpcmesh_control/model/ (package data)"
    )


def test_the_packaged_examples_are_the_published_ones() -> None:
    published = {p.name: p.read_bytes() for p in (REPO / "manifests" / "examples").glob("*.yaml")}
    packaged = {
        p.name: p.read_bytes()
        for p in (files("grpcmesh_control") / "examples").iterdir()
        if p.name.endswith(".yaml")
    }
    assert published, "manifests/examples holds no MeshService files"
    assert packaged == published, (
        "copy manifests/examples/*.yaml to operator/grpcmesh_control/examples/"
    )
