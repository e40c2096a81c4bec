"""What the integration tests that call through a real Envoy share: a caller's sidecar on free
loopback ports, its MeshService, a descriptor set of made-up services (declared to the mesh the
way a user's are), and the check that Envoy has a healthy endpoint for a cluster."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor_pb2

from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from tests.integration.test_control_plane_envoy import Envoy
from tests.loopback import free_port

PROBE_PACKAGE = "grpcmesh.probe.v1"
CALLER_SERVICE = f"{PROBE_PACKAGE}.Caller"


def caller_sidecar() -> ProxyNode:
    """The sidecar of MeshService ``caller`` (``caller_resource``)."""
    return ProxyNode(
        NodeId.parse("sidecar~caller~0"),
        inbound_port=free_port(),
        egress_port=free_port(),
        app_port=free_port(),
        bind_address="127.0.0.1",
    )


def caller_resource(backends: Iterable[str]) -> dict[str, Any]:
    return {
        "apiVersion": "grpcmesh.io/v1alpha1",
        "kind": "MeshService",
        "metadata": {"name": "caller"},
        "spec": {
            "grpc": {"port": free_port(), "services": [CALLER_SERVICE]},
            "backends": [{"name": name} for name in backends],
        },
    }


def probe_descriptor_set(name: str, services: Mapping[str, Mapping[str, int]]) -> bytes:
    """One proto file ``name`` in ``PROBE_PACKAGE``: each service (by full name) with its
    methods (name -> ``MethodOptions.idempotency_level``), all taking and returning ``Blob``."""
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=PROBE_PACKAGE, syntax="proto3")
    proto.message_type.add(name="Blob")
    blob = f".{PROBE_PACKAGE}.Blob"
    for service, methods in services.items():
        added = proto.service.add(name=service.rpartition(".")[2])
        for method, level in methods.items():
            rpc = added.method.add(name=method, input_type=blob, output_type=blob)
            rpc.options.idempotency_level = level  # type: ignore[assignment]
    return descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString()


async def has_healthy_host(envoy: Envoy, cluster: str, route_config: str) -> bool:
    """Envoy runs, has a healthy endpoint in ``cluster``, has ``route_config`` and no listener
    still warming: a call through it is routed (poll it). A healthy host alone is not enough:
    the routes and the listener's socket may come a moment later."""
    assert envoy.process.poll() is None, f"envoy exited:\n{envoy.log_tail()}"
    status, text = await envoy.get("/clusters")
    if not (status == 200 and f"{cluster}::" in text):
        return False
    try:  # the admin helpers assert a 200, which a loaded machine may miss: ask again
        if "healthy" not in (await envoy.hosts(cluster)).values():
            return False
        if route_config not in await envoy.routes():
            return False
    except AssertionError:
        return False
    return (await envoy.get("/ready"))[0] == 200 and (
        await envoy.stat("listener_manager.total_listeners_warming") == 0
    )


SERVING_TIMEOUT = 30.0
"""Seconds for Envoy to get its first config: generous, other tests share the machine."""
