"""Files kept in more than one place, byte for byte: ``make copies`` writes them from their
source, ``--check`` (``make gen-check``) lists the stale ones.

- manifests/crds/*.yaml -> charts/grpcmesh/crds/ (Helm installs CRDs from the chart's crds/)
- the MeshService CRD -> operator/grpcmesh_control/mesh/model/ (package data: its schema validates)
- manifests/examples/*.yaml -> operator/grpcmesh_control/examples/ (package data: the CLI's
  default resources outside a checkout)
- the chart's reference descriptor set (``make chart-assets``) -> operator/grpcmesh_control/mesh/
  (package data: the protos every mesh knows, ``mesh.catalogs.reference_protos``)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["copies", "main"]

REPO = Path(__file__).resolve().parents[1]


def copies(repo: Path = REPO) -> Iterator[tuple[Path, Path]]:
    """(source, copy) pairs."""
    for crd in sorted((repo / "manifests" / "crds").glob("*.yaml")):
        yield crd, repo / "charts" / "grpcmesh" / "crds" / crd.name
    crd = repo / "manifests" / "crds" / "meshservices.grpcmesh.io.yaml"
    yield crd, repo / "operator" / "grpcmesh_control" / "mesh" / "model" / crd.name
    for example in sorted((repo / "manifests" / "examples").glob("*.yaml")):
        yield example, repo / "operator" / "grpcmesh_control" / "examples" / example.name
    descriptors = repo / "charts" / "grpcmesh" / "files" / "descriptors" / "grpcmesh.shop.v1.binpb"
    yield descriptors, repo / "operator" / "grpcmesh_control" / "mesh" / descriptors.name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.copies", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when stale")
    args = parser.parse_args(argv)
    stale = [
        (source, copy)
        for source, copy in copies()
        if not copy.is_file() or copy.read_bytes() != source.read_bytes()
    ]
    for source, copy in stale:
        if args.check:
            print(
                f"out of date: {copy.relative_to(REPO)} (copy of {source.relative_to(REPO)})",
                file=sys.stderr,
            )
        else:
            shutil.copyfile(source, copy)
            print(copy.relative_to(REPO))
    if args.check and stale:
        print("run `make copies`", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
