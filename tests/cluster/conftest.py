"""The cluster tier: one real control plane (``../shared/kube``) for the whole session.

Each test works in a namespace of its own (``namespace``), so tests share the API server but
not objects; cluster-scoped objects a test creates carry the namespace in their names.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.cluster.kube import KubeCluster

_names = itertools.count()


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeCluster]:
    """A control plane with no hollow nodes, our CRDs installed and Established."""
    cluster = KubeCluster.start(hollow_nodes=0)
    try:
        cluster.install_crds()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def namespace(kube: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (without waiting) afterwards."""
    stem = request.node.name.split("[")[0].replace("_", "-").lower()[:40].strip("-")
    name = kube.create_namespace(f"{stem}-{next(_names)}")
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false")
