"""Workload certificates for connected Envoys, served as their SDS secrets over ADS.

``WorkloadCertificates`` watches the xDS cache: when a sidecar (or the ingress gateway)
connects, it issues a certificate for the node's SPIFFE ID (``identity_of``), with a key made
in memory, and sets the node's two secrets (``translate.tls.workload_secrets``) before the
node's first request is answered. The key never touches a disk: it lives in this process and
on the node's ADS stream. ``run`` renews every certificate at ``renew_fraction`` of its life
(half by default) and pushes the new secret; Envoy uses it for new handshakes while the
connections already open carry on, so a rotation fails no call. A node that disconnects is
forgotten (its certificate with it): one that comes back is issued a new one.

A root rotation changes what the nodes hold without a restart: ``set_authority`` takes a new
trust bundle (every node is sent its certificate again with it) or a new signer (every node is
issued a new certificate). Each change is an *epoch*; ``pending`` names the connected nodes
that have not yet ACKed the secrets of the current one, which is how a rotation knows every
node trusts the new root before anything is signed by it.

The renewal time is measured from the issuance, not from ``notBefore``: the CA backdates
``notBefore`` for clock skew, which would make a short-lived certificate due at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from grpcmesh_control.mesh.ca import (
    CertificateAuthority,
    CertificateSettings,
    Issued,
    certificate_settings_from_env,
    trust_bundle,
)
from grpcmesh_control.mesh.clock import Clock, SystemClock
from grpcmesh_control.mesh.errors import InvalidNodeId
from grpcmesh_control.mesh.model.identity import (
    DEFAULT_TRUST_DOMAIN,
    LOCAL_NAMESPACE,
    SpiffeId,
    ingress_identity,
    workload_identity,
)
from grpcmesh_control.mesh.translate import NodeId, NodeKind, workload_secrets
from grpcmesh_control.mesh.translate.versioned import SECRET, pack_resources
from grpcmesh_control.mesh.xds import NodeStatus, SnapshotCache

__all__ = [
    "CertificateSettings",
    "NodeCertificate",
    "WorkloadCertificates",
    "certificate_settings_from_env",
    "node_identity",
]

log = logging.getLogger(__name__)

MAX_CHECK_INTERVAL = 1.0
"""Longest ``run`` sleeps between looks at what is due (seconds)."""


def node_identity(
    node_id: str,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    namespace_of: Callable[[str], str | None] = lambda service: None,
    ingress_namespace: str = LOCAL_NAMESPACE,
) -> SpiffeId:
    """The identity a node's certificate names: a sidecar's MeshService's workload (in its
    namespace, ``namespace_of``, local mode's default when unknown); the ingress gateway the
    account authorization rules call the ingress (``ingress_identity``) in
    ``ingress_namespace``, never a name a MeshService could also have. ``InvalidNodeId`` for
    an id of no known form."""
    parsed = NodeId.parse(node_id)
    if parsed.kind is NodeKind.INGRESS:
        return ingress_identity(ingress_namespace, trust_domain)
    namespace = namespace_of(parsed.name) or LOCAL_NAMESPACE
    return workload_identity(parsed.name, namespace, trust_domain)


@dataclass(frozen=True)
class NodeCertificate:
    """What a connected node holds: for ``/status`` and the expiry metrics (no key)."""

    node_id: str
    identity: SpiffeId
    issued_at: dt.datetime
    """When the control plane issued it (``notBefore`` is backdated for clock skew)."""
    not_after: dt.datetime
    serial: int


@dataclass(frozen=True)
class _Held:
    issued: Issued
    renew_at: dt.datetime
    identity: SpiffeId
    issued_at: dt.datetime


class WorkloadCertificates:
    """See the module docstring. ``now`` is the wall clock certificates are dated by."""

    def __init__(
        self,
        cache: SnapshotCache,
        ca: CertificateAuthority,
        settings: CertificateSettings | None = None,
        *,
        clock: Clock | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        namespace_of: Callable[[str], str | None] = lambda service: None,
        roots: Sequence[x509.Certificate] = (),
    ) -> None:
        self._cache = cache
        self._ca = ca
        self._roots: tuple[x509.Certificate, ...] = tuple(roots) or (ca.root,)
        self.epoch = _epoch(ca, self._roots)
        """Names the current signer and bundle; ``pending`` compares nodes' ACKs with it."""
        self._pushed: dict[str, tuple[str, str]] = {}
        # node -> (secrets version, epoch) last set; and the epoch of the last one it ACKed
        self._acked_epoch: dict[str, str] = {}
        self.settings = settings or CertificateSettings()
        self._clock: Clock = clock or SystemClock()
        self._now = now
        self._namespace_of = namespace_of
        self._held: dict[str, _Held] = {}
        self.issued_count = 0
        """Certificates issued so far (first ones and renewals)."""
        cache.subscribe(self._on_node)

    def certificate(self, node_id: str) -> Issued | None:
        """The certificate ``node_id`` holds now (None: not connected, or no identity)."""
        held = self._held.get(node_id)
        return None if held is None else held.issued

    def held(self, node_id: str) -> NodeCertificate | None:
        """``node_id``'s certificate, as status and metrics show it (None: it holds none)."""
        held = self._held.get(node_id)
        if held is None:
            return None
        return NodeCertificate(
            node_id,
            held.identity,
            held.issued_at,
            held.issued.not_after,
            held.issued.certificate.serial_number,
        )

    def all_held(self) -> list[NodeCertificate]:
        """Every connected node's certificate, by node id."""
        return [c for node in sorted(self._held) if (c := self.held(node)) is not None]

    @property
    def roots_not_after(self) -> dt.datetime:
        """The earliest expiry of the mesh's trust anchors and the CA's signing chain: past
        it, no certificate the mesh issues verifies (a root rotation is due before)."""
        return min(c.not_valid_after_utc for c in (self._ca.certificate, *self._ca.chain))

    @property
    def ca(self) -> CertificateAuthority:
        """The CA signing now."""
        return self._ca

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The trust bundle every node is sent (the signer's root first)."""
        return self._roots

    def set_authority(self, ca: CertificateAuthority, roots: Sequence[x509.Certificate]) -> int:
        """Sign with ``ca`` and send every node ``roots`` from now on. A new signer re-issues
        every node's certificate; a new bundle alone re-sends each node its certificate with
        it. Returns how many nodes were sent new secrets (0: nothing changed)."""
        roots = tuple(roots)
        epoch = _epoch(ca, roots)
        if epoch == self.epoch:
            return 0
        new_signer = _fingerprint(ca.certificate) != _fingerprint(self._ca.certificate)
        self._ca, self._roots, self.epoch = ca, roots, epoch
        nodes = list(self._held)
        for node_id in nodes:
            if new_signer:
                self.issue(node_id)
            else:
                self._serve(node_id, self._held[node_id])
        log.info(
            "trust bundle %s, signer %s: %d nodes sent new secrets",
            ", ".join(r.subject.rfc4514_string() for r in roots),
            ca.certificate.subject.rfc4514_string(),
            len(nodes),
        )
        return len(nodes)

    def pending(self) -> list[str]:
        """Connected nodes holding a certificate that have not ACKed the current epoch's
        secrets (their trust bundle and signer), by node id. Proxyless apps are not waited
        for: gRPC's xDS client asks for no SDS secrets, so it never ACKs any."""
        return sorted(
            n
            for n in self._held
            if self._acked_epoch.get(n) != self.epoch
            and NodeId.parse(n).kind is not NodeKind.PROXYLESS
        )

    def _on_node(self, status: NodeStatus) -> None:
        if not status.connected:
            self._held.pop(status.node_id, None)
            self._pushed.pop(status.node_id, None)
            self._acked_epoch.pop(status.node_id, None)
            self._cache.forget_node_secrets(status.node_id)
            return
        if status.node_id not in self._held:
            self.issue(status.node_id)
        pushed = self._pushed.get(status.node_id)
        if pushed is not None and status.acked.get(SECRET) == pushed[0]:
            self._acked_epoch[status.node_id] = pushed[1]

    def issue(self, node_id: str) -> bool:
        """Issue ``node_id`` a new certificate and serve it; False for a node id of no known
        form (it gets no snapshot either)."""
        try:
            identity = node_identity(
                node_id,
                self.settings.trust_domain,
                self._namespace_of,
                self.settings.ingress_namespace,
            )
        except InvalidNodeId:
            return False
        now = self._now()
        issued = self._ca.issue_workload(identity, now, ttl=self.settings.ttl)
        life = issued.not_after - now
        held = self._held[node_id] = _Held(
            issued, now + life * self.settings.renew_fraction, identity, now
        )
        self._serve(node_id, held)
        self.issued_count += 1
        log.info("issued %s a certificate for %s until %s", node_id, identity, issued.not_after)
        return True

    def _serve(self, node_id: str, held: _Held) -> None:
        issued = held.issued
        certificate, roots = workload_secrets(
            issued.cert_chain_pem(), issued.key_pem(), trust_bundle(self._roots, self._now())
        )
        secrets = pack_resources(SECRET, [certificate, roots])
        self._pushed[node_id] = (secrets.version, self.epoch)
        self._cache.set_node_secrets(node_id, secrets)

    def renew_due(self) -> int:
        """Renew every certificate due now; how many were renewed."""
        now = self._now()
        due = [node for node, held in self._held.items() if held.renew_at <= now]
        for node in due:
            self.issue(node)
        return len(due)

    async def run(self) -> None:
        """Renew certificates as they come due, until cancelled."""
        while True:
            self.renew_due()
            now = self._now()
            soonest = min((h.renew_at for h in self._held.values()), default=None)
            wait = MAX_CHECK_INTERVAL
            if soonest is not None:
                wait = min(wait, max(0.0, (soonest - now).total_seconds()))
            await self._clock.sleep(wait)


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def _epoch(ca: CertificateAuthority, roots: Sequence[x509.Certificate]) -> str:
    digest = hashlib.sha256(_fingerprint(ca.certificate))
    for root in roots:
        digest.update(_fingerprint(root))
    return digest.hexdigest()[:16]
