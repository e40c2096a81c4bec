"""The cluster tier: one real control plane (``../shared/kube``) for the whole session.

Each test works in a namespace of its own (``namespace``), so tests share the API server but
not objects; cluster-scoped objects a test creates carry the namespace in their names.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest

from tests.cluster.agent.runners import ImageRunner, NullRunner, ProcessRunner, Runner
from tests.cluster.kube import KubeCluster
from tests.cluster.node_agent import AgentOptions, AgentThread
from tests.deploy.checks import dockerfiles
from tests.images.kit import ImageKit

_names = itertools.count()
_agents = itertools.count()

StartAgent = Callable[..., AgentThread]


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeCluster]:
    """A control plane with no hollow nodes, our CRDs installed and Established."""
    cluster = KubeCluster.start(hollow_nodes=0)
    try:
        cluster.install_crds()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def mesh_images() -> dict[str, str]:
    """skaffold artifact name -> tag of the five images of this checkout, built once per
    session with the image tier's kit (same tags: after the image tier, all cache hits)."""
    kit = ImageKit.find()
    kit.setup()
    return {name: kit.build(name, dockerfile).tag for name, dockerfile in dockerfiles().items()}


@pytest.fixture
def namespace(kube: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (without waiting) afterwards."""
    stem = request.node.name.split("[")[0].replace("_", "-").lower()[:40].strip("-")
    name = kube.create_namespace(f"{stem}-{next(_names)}")
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def start_node_agent(kube: KubeCluster) -> Iterator[StartAgent]:
    """Start test node agents (``tests/cluster/node_agent.py``): each registers a Node of its
    own and runs the pods bound to it. ``start_node_agent(runner="process" | "image" |
    "none" | a Runner, **AgentOptions fields)``: local processes (fast), the real images
    (image-kit), or nothing at all (pods Ready at once, for scale). Every agent is stopped
    (containers stopped, Node deleted) when the test ends."""
    started: list[AgentThread] = []

    def start(
        runner: Literal["process", "image", "none"] | Runner = "process", **options: Any
    ) -> AgentThread:
        chosen: Runner
        if runner == "process":
            chosen = ProcessRunner()
        elif runner == "image":
            chosen = ImageRunner()
        elif runner == "none":
            chosen = NullRunner()
        else:
            chosen = runner
        name = options.pop("node_name", f"agent-{os.getpid()}-{next(_agents)}")
        agent = AgentThread(kube.kubeconfig, AgentOptions(node_name=name, runner=chosen, **options))
        started.append(agent.start())
        return agent

    yield start
    for agent in reversed(started):
        agent.stop()


@pytest.fixture
def node_agent(start_node_agent: StartAgent) -> AgentThread:
    """One node agent running containers as local processes (the fast runner)."""
    return start_node_agent("process")
