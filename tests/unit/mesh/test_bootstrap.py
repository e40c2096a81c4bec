"""render_bootstrap / envoy_command: what the operator and the local launcher start Envoy with."""

from __future__ import annotations

from typing import Any

import pytest

from grpcmesh_control.mesh.translate import NodeId, ProxyNode
from grpcmesh_control.mesh.translate.bootstrap import XdsTransport, envoy_command, render_bootstrap

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def sidecar_bootstrap(**kwargs: Any) -> dict[str, Any]:
    node = ProxyNode(NodeId.sidecar("orders", "0"), inbound_port=41001, app_port=41003)
    return render_bootstrap(
        str(node.id),
        node.id.envoy_cluster,
        kwargs.pop("xds_address", "127.0.0.1:18000"),
        15000,
        node_metadata=node.metadata(),
        **kwargs,
    )


def test_node_identity_round_trips_through_metadata() -> None:
    boot = sidecar_bootstrap()
    node = boot["node"]
    assert (node["id"], node["cluster"]) == ("sidecar~orders~0", "orders")
    parsed = ProxyNode.from_node(node["id"], node["metadata"])
    assert (parsed.inbound_port, parsed.app_port) == (41001, 41003)


def test_admin_listens_on_loopback_only() -> None:
    address = sidecar_bootstrap()["admin"]["address"]["socket_address"]
    assert address == {"address": "127.0.0.1", "port_value": 15000}


def test_everything_dynamic_comes_over_ads() -> None:
    dynamic = sidecar_bootstrap()["dynamic_resources"]
    ads = dynamic["ads_config"]
    # Delta: a push carries only what changed, not every resource of the type.
    assert (ads["api_type"], ads["transport_api_version"]) == ("DELTA_GRPC", "V3")
    assert ads["grpc_services"] == [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]
    for key in ("cds_config", "lds_config"):
        assert dynamic[key] == {"ads": {}, "resource_api_version": "V3"}


def test_state_of_the_world_is_a_choice() -> None:
    ads = sidecar_bootstrap(xds_transport=XdsTransport.SOTW)["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC"


@pytest.mark.parametrize(
    ("address", "kind", "host", "port"),
    [
        ("127.0.0.1:18000", "STATIC", "127.0.0.1", 18000),
        ("[::1]:18000", "STATIC", "::1", 18000),
        (
            "grpcmesh-control.grpcmesh-system.svc:18000",
            "STRICT_DNS",
            "grpcmesh-control.grpcmesh-system.svc",
            18000,
        ),
    ],
)
def test_xds_cluster_speaks_http2(address: str, kind: str, host: str, port: int) -> None:
    (xds,) = sidecar_bootstrap(xds_address=address)["static_resources"]["clusters"]
    assert (xds["name"], xds["type"]) == ("xds_cluster", kind)
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": host, "port_value": port}
    http = xds["typed_extension_protocol_options"][HTTP_OPTIONS]["explicit_http_config"]
    assert "connection_keepalive" in http["http2_protocol_options"]


@pytest.mark.parametrize("address", ["18000", "host:", ":18000", "host:99999", "host:port"])
def test_bad_xds_address(address: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        sidecar_bootstrap(xds_address=address)


def test_health_listener_exposes_only_readiness_and_stats() -> None:
    resources = sidecar_bootstrap(health_port=15021)["static_resources"]
    (health,) = resources["listeners"]
    assert health["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15021}
    manager = health["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"] for r in routes] == [{"path": "/ready"}, {"path": "/stats/prometheus"}]
    assert {r["route"]["cluster"] for r in routes} == {"admin"}
    assert "listeners" not in sidecar_bootstrap()["static_resources"]


def test_command_line() -> None:
    command = envoy_command("/etc/envoy/bootstrap.yaml", envoy="/venv/bin/envoy", concurrency=1)
    assert command[:3] == ["/venv/bin/envoy", "-c", "/etc/envoy/bootstrap.yaml"]
    assert "--disable-hot-restart" in command
    assert command[command.index("--concurrency") + 1] == "1"
    assert "--base-id" not in command
    assert envoy_command("b.yaml", base_id=7)[-2:] == ["--base-id", "7"]
