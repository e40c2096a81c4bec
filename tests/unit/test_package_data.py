"""What the package reads at run time ships inside it, as copies of the files users see.

The operator image and an installed wheel have no checkout: the CRD schema and the reference
resources come from package data (importlib.resources), and Helm installs the chart's own
crds/. Every copy must stay byte-identical to manifests/ (the published form), or the local
validator, the chart and the API server would disagree. ``make copies`` writes them.
"""

from __future__ import annotations

from importlib.resources import files

from grpcmesh_control.mesh.catalogs import reference_protos
from grpcmesh_control.mesh.model.schema import CRD_PATH
from scripts.copies import copies


def test_every_copy_equals_its_source() -> None:
    pairs = list(copies())
    # two CRDs to the chart, one to the package, four examples, the reference descriptor set
    assert len(pairs) >= 8, pairs
    for source, copy in pairs:
        assert copy.read_bytes() == source.read_bytes(), f"{copy} is stale: run `make copies`"


def test_the_package_reads_its_own_copies() -> None:
    packaged = [copy for _, copy in copies() if "grpcmesh_control" in copy.parts]
    assert CRD_PATH.read_bytes() == packaged[0].read_bytes()
    examples = {p.name for p in (files("grpcmesh_control") / "examples").iterdir()}
    assert {copy.name for copy in packaged[1:] if copy.suffix == ".yaml"} <= examples
    assert reference_protos().serialized() == packaged[-1].read_bytes()
