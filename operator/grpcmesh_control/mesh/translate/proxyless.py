"""What a proxyless client gets: the xDS resources gRPC's own xDS client reads, so an app's
channel to ``xds:///<backend>`` takes its routes, deadlines, retries, splits and endpoints
from the control plane and calls the backend's sidecar directly (no egress sidecar hop).

A proxyless node (``proxyless~<service>~<replica>``) gets, per MeshService backend ``B`` of
its service:

- Listener ``B`` with an ``api_listener`` (gRPC asks for the listener named as the target's
  path, ``xds:///B``): an HTTP connection manager with RDS ``B`` and the filters
  [fault, router];
- RouteConfiguration ``B``: one virtual host (domains ``B``, ``B:*``) with the same routes a
  sidecar's egress gets (``policy.route_policies``), in the fields gRPC honours: path/prefix
  matches, one cluster or weighted clusters, the retry policy (gRFC A44: ``retry_on`` status
  names, ``num_retries``), faults per route (A33). No deadline (A31's
  ``max_stream_duration``): grpcio, the kit's gRPC, fires a deadline that comes from config
  up to 2 s early (grpc/grpc#34547, measured: a 2 s route timeout ended calls after 0.2 to
  0.9 s). The backend's own sidecar enforces the route's deadline instead, on its inbound
  listener (``routes.inbound_route_config``), which every backend keeps;
- Cluster ``B|<version>`` per version: EDS over ADS, round robin, the ``max_requests``
  circuit breaker (A32); and the load assignments a sidecar gets (a version's endpoints at
  priority 0, the other versions at priority 1, so a version with no ready endpoint fails
  over the way it does in Envoy: gRPC's priority policy moves to the next priority).

An external backend ``E`` gets Listener and RouteConfiguration ``E`` too, routing every call
to the EDS cluster ``sidecar-egress``, whose one endpoint is the replica's own sidecar's egress
listener (``ProxyNode.local_address``:``egress_port``): gRPC sends ``:authority`` ``E`` and
the sidecar routes it as before (TLS, host rewrite). The app dials every backend the same way.

What a proxyless client does not get (docs/traffic-policy.md, "Proxyless gRPC"): the retry of
calls that never reached an app beyond gRPC's own transparent retry, per-try timeouts, retry
budgets, outlier detection by consecutive errors, load balancers other than round robin, and
connect timeouts.

``grpc_bootstrap`` is the bootstrap gRPC's xDS client reads (``GRPCMESH_XDS_BOOTSTRAP``); with a
secured control plane it names the mesh root to verify the xDS server with and the file holding
the node's token (``local.credential.node_token``, a JWT).
"""

from __future__ import annotations

from typing import Any

from envoy.config.listener.v3 import api_listener_pb2
from envoy.config.route.v3 import route_components_pb2 as route
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from grpcmesh_control.mesh.model.mesh import Endpoint, MeshService, VersionTarget
from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.clusters import load_assignment
from grpcmesh_control.mesh.translate.listeners import ROUTER_FILTER
from grpcmesh_control.mesh.translate.naming import ProxyNode, version_cluster_name
from grpcmesh_control.mesh.translate.policy import EffectiveRetry, RoutePolicy, route_policies
from grpcmesh_control.mesh.translate.registry import Registry
from grpcmesh_control.mesh.translate.routes import (
    FAULT_FILTER,
    RETRY_ON_TOKENS,
    fault_config,
)

__all__ = [
    "CALL_CREDS_GATE",
    "GRPC_MAX_ATTEMPTS",
    "SIDECAR_EGRESS_CLUSTER",
    "grpc_bootstrap",
    "proxyless_backends",
    "proxyless_cluster",
    "proxyless_listener",
    "proxyless_retry_policy",
    "proxyless_route_config",
    "sidecar_egress",
]

Cluster = e.cluster_pb2.Cluster
GRPC_MAX_ATTEMPTS = 5
"""gRPC caps a call's attempts at 5 (the first and 4 retries), whatever the policy says."""
CALL_CREDS_GATE = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"
"""The environment variable without which gRPC ignores a bootstrap's ``call_creds`` (grpcio
1.85: read when the process's xDS client parses its bootstrap; any value but a true one leaves
the ADS calls without the token, and a secured control plane refuses them)."""
SIDECAR_EGRESS_CLUSTER = "sidecar-egress"
"""The replica's own sidecar's egress listener: where a proxyless client's external calls go."""


def grpc_bootstrap(
    node: ProxyNode,
    xds_address: str,
    *,
    node_id: str | None = None,
    trusted_ca: str | None = None,
    token_file: str | None = None,
) -> dict[str, Any]:
    """gRPC's xDS bootstrap for ``node``: the control plane at ``xds_address`` (host:port,
    xDS v3 over one ADS stream, state of the world) and the node's identity. ``node_id``
    replaces ``node.id`` as written, e.g. ``proxyless~<svc>~$(POD_NAME)`` for the kubelet to
    expand (a placeholder no ``NodeId`` accepts).

    ``trusted_ca`` (a PEM file): the channel to the control plane is TLS, its certificate
    verified against that root (gRFC A65's ``tls`` channel credentials); None: plaintext.
    ``token_file``: every ADS call carries ``authorization: Bearer <the file's JWT>`` (gRFC
    A97's ``jwt_token_file`` call credentials, which gRPC reads only with
    ``CALL_CREDS_GATE=true`` in the app's environment, and sends only over TLS)."""
    if token_file is not None and trusted_ca is None:
        raise ValueError("gRPC sends call credentials over TLS only: give trusted_ca too")
    server: dict[str, Any] = {
        "server_uri": xds_address,
        "channel_creds": (
            [{"type": "insecure"}]
            if trusted_ca is None
            else [{"type": "tls", "config": {"ca_certificate_file": trusted_ca}}]
        ),
        "server_features": ["xds_v3"],
    }
    if token_file is not None:
        server["call_creds"] = [
            {"type": "jwt_token_file", "config": {"jwt_token_file": token_file}}
        ]
    return {
        "xds_servers": [server],
        "node": {
            "id": str(node.id) if node_id is None else node_id,
            "cluster": node.id.envoy_cluster,
            "metadata": node.metadata(),
            "locality": {},
        },
    }


def proxyless_backends(svc: MeshService, registry: Registry) -> list[MeshService]:
    """The MeshService backends of ``svc`` that exist, by name: what its proxyless client
    routes (external backends stay behind the sidecar)."""
    found = []
    for backend in sorted(registry.resolved_backends(svc), key=lambda b: b.name):
        target = None if backend.external is not None else registry.service(backend.name)
        if target is not None:
            found.append(target)
    return found


def sidecar_egress(
    node: ProxyNode, external: list[str]
) -> tuple[
    e.cluster_pb2.Cluster,
    e.endpoint_pb2.ClusterLoadAssignment,
    list[e.route_pb2.RouteConfiguration],
]:
    """The ``sidecar-egress`` cluster, its one endpoint, and a route configuration per
    external backend sending every call there."""
    cluster = Cluster(
        name=SIDECAR_EGRESS_CLUSTER,
        type=Cluster.DiscoveryType.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(
            eds_config=e.ads_source(), service_name=SIDECAR_EGRESS_CLUSTER
        ),
        lb_policy=Cluster.LbPolicy.ROUND_ROBIN,
    )
    assignment = load_assignment(
        SIDECAR_EGRESS_CLUSTER, [Endpoint(node.local_address, node.egress_port, "")]
    )
    routes = []
    for name in external:
        action = route.RouteAction(cluster=SIDECAR_EGRESS_CLUSTER)
        catch_all = route.Route(name=f"{name}/", match=route.RouteMatch(prefix="/"), route=action)
        host = route.VirtualHost(name=name, domains=[name, f"{name}:*"], routes=[catch_all])
        routes.append(e.route_pb2.RouteConfiguration(name=name, virtual_hosts=[host]))
    return cluster, assignment, routes


def proxyless_listener(backend: str) -> e.listener_pb2.Listener:
    """Listener ``backend``: what gRPC resolves ``xds:///<backend>`` to (an API listener: it
    configures the client's channel, it binds nothing)."""
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=backend,
        rds=hcm_pb2.Rds(config_source=e.ads_source(), route_config_name=backend),
        # gRPC requires the router last; the fault filter is inert without a route's config.
        http_filters=[
            hcm_pb2.HttpFilter(name=FAULT_FILTER, typed_config=e.pack(fault_pb2.HTTPFault())),
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=e.pack(e.router_pb2.Router())),
        ],
    )
    return e.listener_pb2.Listener(
        name=backend,
        api_listener=api_listener_pb2.ApiListener(api_listener=e.pack(manager)),
    )


def proxyless_retry_policy(retry: EffectiveRetry) -> route.RetryPolicy:
    """``retry`` as gRPC reads it (gRFC A44): the statuses by name and the number of retries,
    capped so the attempts stay within ``GRPC_MAX_ATTEMPTS``; gRPC's default backoff (25 ms
    base, 250 ms cap, jittered) applies. There is no per-try timeout."""
    return route.RetryPolicy(
        retry_on=",".join(RETRY_ON_TOKENS[code] for code in retry.retry_on),
        num_retries=e.u32(min(retry.attempts, GRPC_MAX_ATTEMPTS - 1)),
    )


def _route(svc: MeshService, policy: RoutePolicy) -> route.Route:
    match = (
        route.RouteMatch(path=policy.path) if policy.exact else route.RouteMatch(prefix=policy.path)
    )
    live = [v for v in svc.versions if v.weight > 0]
    if len(live) == 1:
        action = route.RouteAction(cluster=version_cluster_name(svc.name, live[0].name))
    else:
        action = route.RouteAction(
            weighted_clusters=route.WeightedCluster(
                clusters=[
                    route.WeightedCluster.ClusterWeight(
                        name=version_cluster_name(svc.name, v.name), weight=e.u32(v.weight)
                    )
                    for v in live
                ]
            )
        )
    if policy.retry is not None and policy.retry.attempts > 0 and policy.retry.retry_on:
        action.retry_policy.CopyFrom(proxyless_retry_policy(policy.retry))
    built = route.Route(name=f"{svc.name}{policy.path}", match=match, route=action)
    if policy.fault is not None:
        built.typed_per_filter_config[FAULT_FILTER].CopyFrom(e.pack(fault_config(policy.fault)))
    return built


def proxyless_route_config(svc: MeshService, registry: Registry) -> e.route_pb2.RouteConfiguration:
    """RouteConfiguration ``<svc>``: one virtual host, the routes of every gRPC service of
    ``svc`` (method overrides first, then the service prefix, as for a sidecar)."""
    routes = [_route(svc, policy) for policy in route_policies(svc, registry.catalog)]
    host = route.VirtualHost(name=svc.name, domains=[svc.name, f"{svc.name}:*"], routes=routes)
    return e.route_pb2.RouteConfiguration(name=svc.name, virtual_hosts=[host])


def proxyless_cluster(svc: MeshService, version: VersionTarget) -> e.cluster_pb2.Cluster:
    """Cluster ``<svc>|<version>`` in the fields gRPC reads: EDS over ADS, round robin, and
    the concurrent-request limit (``circuitBreaker.maxRequests``, gRFC A32)."""
    name = version_cluster_name(svc.name, version.name)
    cluster = Cluster(
        name=name,
        type=Cluster.DiscoveryType.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(eds_config=e.ads_source(), service_name=name),
        lb_policy=Cluster.LbPolicy.ROUND_ROBIN,
    )
    limit = svc.traffic_policy.circuit_breaker.max_requests
    if limit is not None:
        cluster.circuit_breakers.CopyFrom(
            e.circuit_breaker_pb2.CircuitBreakers(
                thresholds=[
                    e.circuit_breaker_pb2.CircuitBreakers.Thresholds(
                        priority=e.base_pb2.RoutingPriority.DEFAULT, max_requests=e.u32(limit)
                    )
                ]
            )
        )
    return cluster
