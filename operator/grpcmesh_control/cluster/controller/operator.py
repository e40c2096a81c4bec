"""The operator process: kopf (watching, handlers, admission, liveness) and the xDS control plane
(publisher, ADS server, /metrics) in one asyncio loop.

``Operator.run`` owns one TaskGroup: the publisher's debounce loop, the periodic resync, the
status follower (``status_follower``), the event poster (``events``), the webhook certificate
renewal (``webhook_tls``), the ADS gRPC server (with ``mesh_ca_secret``, the mesh CA loaded
from its Secret first, ``mesh_ca``, and the workload certificates' renewal) and kopf itself.
The kopf handlers see the operator only through ``handlers.HandlerHost``. The control plane
starts first, so the first watch events already publish into a serving cache; when kopf stops
(stop flag, SIGTERM) the rest is cancelled and the servers are stopped in ``finally``.

Status follows events: an EndpointSlice change or a Deployment's rollout progress
(``handlers``), or a sidecar's connect/ACK/NACK (the cache's listener) marks its MeshService;
the status follower reconciles the marked ones after ``status_debounce``, so a burst costs one
reconcile per service. The periodic resync
remains the safety net (drift, lost events).

Peering: ``settings.peering`` None runs kopf ``--standalone`` (local, dev). With a name, kopf
peers through that ``ClusterKopfPeering``: only the highest-priority live replica handles
events, the others pause their watches (their ADS servers keep serving) and their resync and
status follower (``peering.peering_active``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web

from grpcmesh_control.cluster.controller.client import (
    MESH_SERVICE,
    ApiError,
    Conflict,
    KubeClient,
)
from grpcmesh_control.cluster.controller.descriptors import (
    DESCRIPTOR_SET_LABEL,
    protos_of_config_maps,
)
from grpcmesh_control.cluster.controller.events import EventPoster
from grpcmesh_control.cluster.controller.gateway_tls import GatewayTlsSecret
from grpcmesh_control.cluster.controller.handlers import register_handlers
from grpcmesh_control.cluster.controller.mesh import SERVICE_NAME_LABEL, MeshState
from grpcmesh_control.cluster.controller.mesh_ca import ensure_mesh_ca
from grpcmesh_control.cluster.controller.metrics import OperatorMetrics
from grpcmesh_control.cluster.controller.peering import CLUSTER_PEERING, peering_active
from grpcmesh_control.cluster.controller.reconcile import Reconciler, rollout_of
from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.controller.status_follower import Key, StatusFollower
from grpcmesh_control.cluster.controller.webhook_server import BoundedWebhookServer
from grpcmesh_control.cluster.controller.webhook_tls import WebhookCertificates
from grpcmesh_control.cluster.controller.xds_auth import (
    TOKEN_EXCHANGE_PATH,
    ServiceAccount,
    ServiceAccountTokens,
    ServingCertificate,
    TokenExchangeServer,
    serving_names,
    token_review,
)
from grpcmesh_control.cluster.objects.kinds import (
    CONFIG_MAP,
    CUSTOM_RESOURCE_DEFINITION,
    ENDPOINT_SLICE,
    SERVICE_MONITOR_CRD,
)
from grpcmesh_control.cluster.objects.settings import XdsCredential
from grpcmesh_control.cluster.objects.status import WorkloadRollout
from grpcmesh_control.host.xds_host import XdsHost, join_host_port
from grpcmesh_control.mesh.ca import CertificateAuthority, trust_bundle
from grpcmesh_control.mesh.catalogs import ProtoSet
from grpcmesh_control.mesh.errors import InvalidNodeId
from grpcmesh_control.mesh.model import MethodCatalog
from grpcmesh_control.mesh.model.identity import service_account_name
from grpcmesh_control.mesh.translate import NodeId
from grpcmesh_control.mesh.translate.bootstrap import split_host_port
from grpcmesh_control.mesh.translate.naming import NodeKind
from grpcmesh_control.mesh.xds.cache import NodeStatus

__all__ = ["Operator", "run_operator"]

log = logging.getLogger(__name__)

_ANNOTATION_PREFIX = "grpcmesh.io"
XDS_ROOT_KEY = "ca.crt"
XDS_SERVING_VALIDITY = timedelta(days=365)
"""The xDS serving certificate's life (the ADS server's and the token exchange's): issued at
every operator start (not renewed while it runs; an operator running for a year must be
restarted)."""


class Operator:
    """The parts are attributes (tests and debugging); ``reconciler`` exists once ``run``
    has connected to the API."""

    def __init__(self, settings: RuntimeSettings, catalog: MethodCatalog | None = None) -> None:
        self.settings = settings
        self._base_catalog = catalog or MethodCatalog()
        self.catalog = self._base_catalog
        """The base catalog merged with every descriptor-set ConfigMap (``descriptors``)."""
        self._descriptor_maps: dict[Key, dict[str, Any]] = {}
        self.protos = ProtoSet()
        """Every descriptor-set ConfigMap's files: reflection at the ingress answers from them."""
        # The same xDS host local mode runs; /status and /debug/* show what it serves.
        self.host = XdsHost(
            catalog,
            problems=lambda: [*self.state.problems(), *self._gateway_problems()],
            protos=lambda: self.protos,
        )
        self.metrics, self.cache, self.publisher = (
            self.host.metrics,
            self.host.cache,
            self.host.publisher,
        )
        self.operator_metrics = OperatorMetrics(self.metrics.registry)
        self.state = MeshState(self.publisher.update, catalog)
        self.metrics.observe(cache=self.cache, source_problems=self.state.invalid_count)
        self.registry = kopf.OperatorRegistry()
        register_handlers(self.registry, self)
        self.xds_port: int | None = None
        self.token_exchange_port: int | None = None
        self._xds_tls: ServingCertificate | None = None
        """The xDS serving certificate (xDS authentication on): the ADS server and the token
        exchange both present it, and follow it when it is replaced."""
        self.metrics_port: int | None = None
        self._reconciler: Reconciler | None = None
        self._rollouts: dict[Key, WorkloadRollout] = {}
        self._client: KubeClient | None = None
        self.events = EventPoster(self.operator_metrics)
        self.status_follower = StatusFollower(settings.status_debounce)
        self.webhook_certificates = WebhookCertificates(settings)
        self.cache.subscribe(self._node_changed)
        self.gateway_tls: GatewayTlsSecret | None = None
        """Reads the gateway's TLS Secret and serves it (``settings.gateway_tls_secret``)."""

    @property
    def webhook_tls_dir(self) -> Path | None:
        """Where the operator's own serving certificate is written (managed TLS only)."""
        return self.webhook_certificates.directory

    @property
    def reconciler(self) -> Reconciler:
        if self._reconciler is None:
            raise RuntimeError("the operator is not running")
        return self._reconciler

    # --- hooks the kopf handlers call ------------------------------------------------------

    def configure_kopf(self, settings: kopf.OperatorSettings) -> None:
        # Progress and the last-handled spec in our annotations, nothing under status.kopf.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=_ANNOTATION_PREFIX
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=_ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.posting.level = logging.ERROR  # our own events say what was done
        settings.watching.reconnect_backoff = 1.0
        settings.persistence.consistency_timeout = self.settings.consistency_timeout
        if self.settings.webhook_port is not None:
            files = self.webhook_certificates.files
            settings.admission.server = BoundedWebhookServer(
                addr=self.settings.webhook_addr,
                port=self.settings.webhook_port,
                host=self.settings.webhook_host,
                certfile=files[0] if files else None,
                pkeyfile=files[1] if files else None,
            )
            settings.admission.managed = None  # the chart installs the webhook configurations

    async def stopping(self) -> None:
        """kopf's cleanup: end the ADS streams now, so kopf does not wait for them as hung
        tasks (Envoys reconnect to the next operator and keep their config meanwhile)."""
        log.info("operator stopping")
        await self.host.stop_serving(self.settings.stop_grace)

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue a Kubernetes Event about ``body`` (``EventPoster.post``)."""
        self.events.post(body, type_, reason, message)

    def refresh_status(self, key: Key | None) -> None:
        """Mark a MeshService whose observed state (endpoints, sidecar ACKs) changed; the
        status follower reconciles it soon. Safe from any thread."""
        self.status_follower.mark(key)

    def rollout_changed(self, deployment: Mapping[str, Any], *, deleted: bool = False) -> bool:
        """Whether an owned Deployment's rollout state differs from the last one seen (the
        first sighting counts as a change)."""
        meta = deployment.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        if deleted:
            return self._rollouts.pop(key, None) is not None
        rollout = rollout_of(deployment)
        if self._rollouts.get(key) == rollout:
            return False
        self._rollouts[key] = rollout
        return True

    def descriptor_set_changed(self, body: Mapping[str, Any], *, deleted: bool = False) -> None:
        """A descriptor-set ConfigMap appeared, changed or went: recompute the catalog; when
        it differs, the publisher rebuilds with it and every MeshService is re-validated
        (a ``spec.methods`` name may now be known or unknown)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        if deleted:
            self._descriptor_maps.pop(key, None)
        else:
            self._descriptor_maps[key] = dict(body)
        self.protos, _ = protos_of_config_maps(self._descriptor_maps.values())
        catalog = self._base_catalog.merged(self.protos.catalog)
        if catalog == self.catalog:
            return
        self.catalog = catalog
        self.state.set_catalog(catalog)
        self.publisher.set_catalog(catalog)
        log.info("method catalog: %d gRPC services", len(catalog.service_names))
        if self._reconciler is not None:
            for known in self._reconciler.known():
                self.refresh_status(known)

    def _gateway_problems(self) -> list[str]:
        problem = None if self.gateway_tls is None else self.gateway_tls.problem
        return [] if problem is None else [problem]

    def _node_changed(self, node: NodeStatus) -> None:
        try:
            parsed = NodeId.parse(node.node_id)
        except InvalidNodeId:
            return
        if parsed.kind is NodeKind.SIDECAR:
            self.refresh_status(self.state.key_of(parsed.name))

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(
        self,
        stop_flag: asyncio.Event | threading.Event | None = None,
        on_ready: Callable[[Operator], None] | None = None,
    ) -> None:
        """Serve until ``stop_flag`` is set or kopf is signalled. ``on_ready`` is called once
        the ADS server listens (``xds_port`` is then known)."""
        settings = self.settings
        client = self._client = await KubeClient.connect(settings)
        settings = self.settings = await self._discover(client)
        if settings.manages_webhook_tls:
            await self.webhook_certificates.ensure(client)
        ca = None
        if settings.mesh_ca_secret is not None:
            ca = await self._load_mesh_ca(client, settings.mesh_ca_secret)
        if settings.gateway_tls_secret is not None and self.gateway_tls is None:
            self.gateway_tls = GatewayTlsSecret(self.host, settings)
            await self.gateway_tls.refresh(client)
        exchange: TokenExchangeServer | None = None
        if settings.xds_auth and ca is not None:
            exchange = await self._secure_xds(client, ca)
            settings = self.settings
        self.events.open()
        self.status_follower.open()
        self._reconciler = Reconciler(
            client,
            self.state,
            self.publisher,
            self.cache,
            settings,
            self.operator_metrics,
            self.post_event,
        )
        await self._prime(client)
        try:
            async with self.host.serving(
                self._http_app(),
                xds_host=settings.xds_host,
                xds_port=settings.xds_port,
                http_host=settings.metrics_host,
                http_port=settings.metrics_port,
                stop_grace=settings.stop_grace,
                tls=self._xds_tls,
            ) as ports:
                self.xds_port, self.metrics_port = ports.xds_port, ports.http_port
                log.info("xDS on port %s, metrics on port %s", self.xds_port, self.metrics_port)
                if on_ready is not None:
                    on_ready(self)
                await self._serve(client, stop_flag)
        finally:
            if exchange is not None:
                await exchange.close()
            await client.close()
            self._reconciler = self._client = None
            self.status_follower.close()

    async def _serve(
        self, client: KubeClient, stop_flag: asyncio.Event | threading.Event | None
    ) -> None:
        settings = self.settings
        async with asyncio.TaskGroup() as tasks:
            background = [
                tasks.create_task(self.publisher.run(), name="publisher"),
                tasks.create_task(self._resync(client), name="resync"),
                tasks.create_task(
                    self.status_follower.run(
                        lambda: self._active(client),
                        lambda key: self.reconciler.reconcile(key=key),
                    ),
                    name="status",
                ),
                tasks.create_task(self.events.run(client), name="events"),
                tasks.create_task(self.host.wait_for_termination(), name="xds-server"),
            ]
            if self.gateway_tls is not None:  # every replica serves xDS, so every one reads it
                background.append(
                    tasks.create_task(self.gateway_tls.refresh_forever(client), name="gateway-tls")
                )
            if settings.manages_webhook_tls:
                background.append(
                    tasks.create_task(
                        self.webhook_certificates.renew_forever(client), name="webhook-tls"
                    )
                )
            try:
                await kopf.operator(
                    registry=self.registry,
                    clusterwide=True,
                    standalone=settings.peering is None,
                    peering_name=settings.peering,
                    priority=settings.peering_priority,
                    liveness_endpoint=settings.liveness_endpoint,
                    stop_flag=stop_flag,
                )
            finally:
                for task in background:
                    task.cancel()

    async def _prime(self, client: KubeClient) -> None:
        """Seed the registry from one listing of MeshServices and mesh EndpointSlices before
        the ADS server listens. Sidecars reconnecting to a restarted operator must get the
        whole mesh at once: a snapshot built from whatever kopf's watches had replayed so far
        (services without their endpoints) would empty their clusters. kopf's events that
        follow set the same objects again (idempotent)."""
        try:
            descriptor_maps = await client.list_objects(CONFIG_MAP, None, DESCRIPTOR_SET_LABEL)
            services = await client.list_objects(MESH_SERVICE, None)
            slices = await client.list_objects(ENDPOINT_SLICE, None, SERVICE_NAME_LABEL)
        except ApiError as exc:
            log.warning("initial listing failed (%s): the registry fills from the watches", exc)
            return
        for body in descriptor_maps:
            self.descriptor_set_changed(body)
        for body in services:
            if not (body.get("metadata") or {}).get("deletionTimestamp"):
                self.state.set_service(body)
        for body in slices:
            self.state.set_slice(body)
        self.publisher.rebuild()
        log.info("registry primed: %d MeshServices, %d EndpointSlices", len(services), len(slices))

    async def _secure_xds(
        self, client: KubeClient, ca: CertificateAuthority
    ) -> TokenExchangeServer:
        """Authenticated xDS (``xds_auth``): a serving certificate from the mesh CA for the
        names sidecars dial, the ServiceAccount-token check on every ADS stream, and the token
        exchange their STS credentials call, over TLS with the same certificate (which also
        names the exchange's ``host:port``, ``serving_names``; it verifies against the mesh
        root the Envoys are given as gRPC's default roots), listening before any bootstrap
        names it. Returns the exchange's server (the caller closes it)."""
        settings = self.settings
        host = split_host_port(settings.render.xds_address)[0]

        def issue(exchange_port: int | None) -> tuple[bytes, bytes]:
            issued = ca.issue_serving(
                serving_names(host, settings.xds_serving_names, exchange_port),
                datetime.now(UTC),
                validity=XDS_SERVING_VALIDITY,
                common_name="grpcmesh xDS",
            )
            return issued.key_pem(), issued.cert_chain_pem()

        configured = settings.token_exchange_port or None  # 0: any free port
        serving = self._xds_tls = ServingCertificate(issue(configured))
        gateway = settings.gateway_service_account
        tokens = ServiceAccountTokens(
            token_review(client),
            self._service_account_of,
            gateway=None if gateway is None else ServiceAccount(settings.namespace, gateway),
        )
        self.host.authenticator = tokens
        exchange = TokenExchangeServer(tokens, serving)
        port = await exchange.start(settings.xds_host, settings.token_exchange_port)
        if port != configured:  # now known: named before the ADS server or a sidecar uses it
            serving.replace(issue(port))
        self.token_exchange_port = port
        credential = XdsCredential(
            root_pem=trust_bundle([ca.root], datetime.now(UTC)).decode(),
            token_exchange_uri=f"https://{join_host_port(host, port)}{TOKEN_EXCHANGE_PATH}",
        )
        if settings.xds_root_config_map is not None:
            await self._publish_root(client, settings.xds_root_config_map, credential.root_pem)
        render = replace(settings.render, xds_credential=credential)
        self.settings = replace(settings, render=render)
        log.info(
            "xDS authentication on: TLS for %s, token exchange (HTTPS) on port %d",
            ", ".join(serving_names(host, settings.xds_serving_names, port)),
            port,
        )
        return exchange

    async def _publish_root(self, client: KubeClient, name: str, root_pem: str) -> None:
        """ConfigMap ``name`` in the operator's namespace holds the mesh root (``ca.crt``):
        what the chart's gateway trusts the xDS server with."""
        namespace = self.settings.namespace
        data = {XDS_ROOT_KEY: root_pem}
        try:
            await client.create(
                CONFIG_MAP,
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": namespace},
                    "data": data,
                },
            )
        except Conflict:
            await client.patch(CONFIG_MAP, namespace, name, {"data": data})

    def _service_account_of(self, service: str) -> ServiceAccount | None:
        """The account the MeshService named ``service`` runs under (the operator renders one
        per MeshService, named like it); None for an unknown service."""
        key = self.state.key_of(service)
        return None if key is None else ServiceAccount(key[0], service_account_name(key[1]))

    async def _load_mesh_ca(self, client: KubeClient, secret: str) -> CertificateAuthority:
        """The mesh CA from (or created in) Secret ``namespace/secret``, before the first
        snapshot: sidecars then speak mTLS, each issued its certificate over SDS. The gateway
        runs in the operator's namespace, so the ingress identity is named there; the kubelet
        probes apps through their sidecar's inbound port without a certificate, so that port
        also answers the plaintext gRPC health check (and nothing else)."""
        settings = self.settings
        ca = await ensure_mesh_ca(
            client, namespace=settings.namespace, secret=secret, now=datetime.now(UTC)
        )
        identity = replace(
            settings.render.identity,
            ingress_namespace=settings.namespace,
            plaintext_health_probes=True,  # the kubelet's probes (cluster.objects.pod)
        )
        self.host.use_ca(ca, identity)
        log.info(
            "mTLS on: mesh CA from secret %s/%s, trust domain %s",
            settings.namespace,
            secret,
            identity.trust_domain,
        )
        return ca

    async def _discover(self, client: KubeClient) -> RuntimeSettings:
        """The settings, corrected by what the cluster serves: ServiceMonitors are rendered
        only when their CRD exists (asked for but missing: a warning, and none rendered,
        rather than every MeshService failing to apply)."""
        settings = self.settings
        if not settings.render.service_monitor_crd:
            return settings
        try:
            found = await client.get(CUSTOM_RESOURCE_DEFINITION, None, SERVICE_MONITOR_CRD)
        except ApiError as exc:
            log.warning(
                "cannot tell whether %s exists (%s): none rendered", SERVICE_MONITOR_CRD, exc
            )
            found = None
        if found is not None:
            return settings
        log.warning(
            "GRPCMESH_SERVICE_MONITOR is on but the cluster has no %s CRD: no "
            "ServiceMonitors are rendered (install the Prometheus Operator, then restart)",
            SERVICE_MONITOR_CRD,
        )
        return replace(settings, render=replace(settings.render, service_monitor_crd=False))

    async def _active(self, client: KubeClient) -> bool:
        """Whether this replica may write: always when standalone; with peering, only while
        kopf's rule makes it the active one (unknown -- the API failing -- counts as no)."""
        if self.settings.peering is None:
            return True
        try:
            body = await client.get(CLUSTER_PEERING, None, self.settings.peering)
        except ApiError:
            return False
        peers = (body or {}).get("status") or {}
        return peering_active(peers, self.settings.peering_priority, datetime.now(UTC))

    async def _resync(self, client: KubeClient) -> None:
        """Re-reconcile every known MeshService periodically: the safety net for drift and
        lost events."""
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            if not await self._active(client):
                continue
            for key in self.reconciler.known():
                try:
                    await self.reconciler.reconcile(key=key)
                except Exception:
                    log.exception("resync of %s/%s failed", *key)

    async def _webhooks_listening(self) -> bool:
        port = self.settings.webhook_port
        if port is None:
            return True
        host = self.settings.webhook_addr
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _http_app(self) -> web.Application:
        """The xDS host's endpoints (/metrics, /status, /debug/*), and /readyz."""

        async def ready(_: web.Request) -> web.Response:
            # Only the replica that handles events is ready: a paused peer's registry is
            # empty, so its xDS server and webhooks must not receive traffic from the Service.
            client = self._client
            if client is None or self._reconciler is None:
                return web.Response(status=503, text="starting\n")
            if not await self._active(client):
                return web.Response(status=503, text="standby: another replica is active\n")
            if not await self._webhooks_listening():
                # kopf starts its webhook server after our servers: until it listens, the
                # API server's admission calls would be refused (failurePolicy Fail).
                return web.Response(status=503, text="starting: webhook server not listening\n")
            return web.Response(text="active\n")

        return self.host.http_app([web.get("/readyz", ready)])


async def run_operator(
    settings: RuntimeSettings,
    *,
    catalog: MethodCatalog | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator (kopf + xDS control plane) until stopped."""
    await Operator(settings, catalog).run(stop_flag=stop_flag)
