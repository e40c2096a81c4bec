"""The ingress gateway's server certificate for outside clients, served over SDS.

Outside clients do not trust the mesh CA (nor should the mesh CA sign names on the public
internet), so the gateway's listener uses a certificate the operator of the mesh configures:
files locally, a ``kubernetes.io/tls`` Secret in a cluster. Each mode reads the PEM bytes;
``GatewayCertificate.from_pem`` checks them (a chain that parses, a key that matches its
leaf, client CAs when client certificates are required) and ``GatewayCertificates`` serves
them to every connected ingress node as its ``translate.tls.gateway_secrets``, beside the
node's workload certificate (``SnapshotCache.set_node_secrets`` with its own source). The key
reaches Envoy over its ADS stream only: no bootstrap or file on the gateway's side holds it.
``update`` swaps the certificate for every connected gateway at once (a renewed file or
Secret): Envoy uses it for new handshakes; open connections carry on.
"""

from __future__ import annotations

import logging

from grpcmesh_control.mesh.errors import InvalidNodeId
from grpcmesh_control.mesh.gateway_certificate import GatewayCertificate, GatewayTlsError
from grpcmesh_control.mesh.translate import GatewayTls, NodeId, NodeKind, gateway_secrets
from grpcmesh_control.mesh.translate.versioned import SECRET, pack_resources
from grpcmesh_control.mesh.xds import NodeStatus, SnapshotCache

__all__ = ["GATEWAY_SECRETS", "GatewayCertificate", "GatewayCertificates", "GatewayTlsError"]

log = logging.getLogger(__name__)

GATEWAY_SECRETS = "gateway"
"""The source name of the gateway's secrets in the xDS cache (``set_node_secrets``)."""


class GatewayCertificates:
    """Serves ``certificate`` to every ingress node from when it connects; ``update`` replaces
    it for all of them. ``certificate`` None: nothing is served yet (a cluster whose Secret
    is not there yet): the gateway's TLS listener waits for it and serves no one."""

    def __init__(
        self,
        cache: SnapshotCache,
        certificate: GatewayCertificate | None,
        tls: GatewayTls | None = None,
    ) -> None:
        self._cache = cache
        self.certificate = certificate
        self.tls = tls or (GatewayTls() if certificate is None else certificate.tls)
        """The listener's shape these certificates must fit (client certificates or not)."""
        if certificate is not None and certificate.tls != self.tls:
            raise GatewayTlsError(f"the certificate serves {certificate.tls}, not {self.tls}")
        self._served: set[str] = set()
        cache.subscribe(self._on_node)

    def update(self, certificate: GatewayCertificate) -> bool:
        """Serve ``certificate`` from now on (every connected gateway is pushed it); False when
        it is the one already served. ``GatewayTlsError`` when it would change whether client
        certificates are required: that is the listener's shape, fixed when the host starts."""
        if self.certificate == certificate:
            return False
        if certificate.tls != self.tls:
            raise GatewayTlsError(
                "client certificates are required or not from the start on; "
                "restart the control plane to change that"
            )
        self.certificate = certificate
        for node_id in sorted(self._served):
            self._serve(node_id)
        log.info("gateway certificate replaced (valid until %s)", certificate.not_after)
        return True

    def _on_node(self, status: NodeStatus) -> None:
        if not status.connected:
            if status.node_id in self._served:
                self._served.discard(status.node_id)
                self._cache.forget_node_secrets(status.node_id)
            return
        if status.node_id in self._served or not _is_gateway(status.node_id):
            return
        self._served.add(status.node_id)
        self._serve(status.node_id)

    def _serve(self, node_id: str) -> None:
        certificate = self.certificate
        if certificate is None:
            return
        secrets = gateway_secrets(
            certificate.chain_pem, certificate.key_pem, certificate.client_roots_pem
        )
        self._cache.set_node_secrets(
            node_id, pack_resources(SECRET, secrets), source=GATEWAY_SECRETS
        )


def _is_gateway(node_id: str) -> bool:
    try:
        return NodeId.parse(node_id).kind is NodeKind.INGRESS
    except InvalidNodeId:
        return False
