"""A snapshot as a static Envoy bootstrap: RDS routes inlined into their listeners, EDS clusters
turned STATIC with their load assignments inlined.

For debugging and tests: ``envoy --mode validate`` checks a snapshot this way without an xDS
server, and a node's config can be replayed by hand (``envoy -c``) when the control plane is
suspected. Not used on the serving path.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from grpcmesh_control.mesh.translate import _envoy as e
from grpcmesh_control.mesh.translate.bootstrap import XDS_CLUSTER, xds_cluster
from grpcmesh_control.mesh.translate.listeners import HCM_FILTER
from grpcmesh_control.mesh.translate.naming import LOCALHOST
from grpcmesh_control.mesh.translate.snapshot import Snapshot

__all__ = ["static_bootstrap"]

Cluster = e.cluster_pb2.Cluster
HCM = e.http_connection_manager_pb2.HttpConnectionManager


def static_bootstrap(
    snapshot: Snapshot,
    *,
    admin_port: int,
    cluster: str = "static",
    xds_address: tuple[str, int] = (LOCALHOST, 18000),
    secrets: Sequence[secret_pb2.Secret] = (),
) -> bootstrap_pb2.Bootstrap:
    """``xds_address``: where the control plane would be, for routes to it (the ingress
    routes server reflection there). ``secrets``: the node's SDS secrets (``tls.
    workload_secrets``), as static secrets the TLS contexts then name without a source."""
    routes = {r.name: r for r in snapshot.routes}
    assignments = {a.cluster_name: a for a in snapshot.endpoints}

    listeners = []
    for original in snapshot.listeners:
        listener = e.listener_pb2.Listener()
        listener.CopyFrom(original)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.name != HCM_FILTER:
                    continue
                hcm = HCM()
                network_filter.typed_config.Unpack(hcm)
                if hcm.HasField("rds"):
                    hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])  # clears rds
                network_filter.typed_config.CopyFrom(e.pack(hcm))
            if chain.HasField("transport_socket"):
                _static_secrets(chain.transport_socket, e.tls_pb2.DownstreamTlsContext())
        listeners.append(listener)

    clusters = []
    for original in snapshot.clusters:
        static = Cluster()
        static.CopyFrom(original)
        if static.type == Cluster.DiscoveryType.EDS:
            name = static.eds_cluster_config.service_name or static.name
            static.ClearField("eds_cluster_config")
            static.type = Cluster.DiscoveryType.STATIC
            static.load_assignment.CopyFrom(assignments[name])
        if static.HasField("transport_socket"):
            _static_secrets(static.transport_socket, e.tls_pb2.UpstreamTlsContext())
        clusters.append(static)
    if any(
        r.route.cluster == XDS_CLUSTER
        for config in snapshot.routes
        for host in config.virtual_hosts
        for r in host.routes
    ):
        clusters.append(xds_cluster(*xds_address, connect_timeout=timedelta(seconds=1)))

    return bootstrap_pb2.Bootstrap(
        node=e.base_pb2.Node(id=snapshot.node_id, cluster=cluster),
        admin=bootstrap_pb2.Admin(address=e.socket_address(LOCALHOST, admin_port)),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(
            listeners=listeners, clusters=clusters, secrets=list(secrets)
        ),
    )


def _static_secrets(
    socket: e.base_pb2.TransportSocket,
    context: e.tls_pb2.DownstreamTlsContext | e.tls_pb2.UpstreamTlsContext,
) -> None:
    """Secrets named without ``sds_config`` are looked up among the static ones."""
    if not socket.typed_config.Unpack(context):
        return  # another kind of transport socket: nothing to rewrite
    common = context.common_tls_context
    for config in common.tls_certificate_sds_secret_configs:
        config.ClearField("sds_config")
    if common.HasField("combined_validation_context"):  # else: not the mesh's (external TLS)
        combined = common.combined_validation_context
        combined.validation_context_sds_secret_config.ClearField("sds_config")
    socket.typed_config.CopyFrom(e.pack(context))
