"""``RuntimeSettings.from_env``: what the chart's environment turns into, and the
combinations refused before anything starts (the entry point exits 2 on ValueError)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from grpcmesh_control.cluster.controller.settings import RuntimeSettings
from grpcmesh_control.cluster.objects import EgressFilter, MissingBackends

CHART_ENV = {
    "GRPCMESH_PROVIDER": "native",
    "GRPCMESH_PROXY_IMAGE": "registry.example/envoy-distroless:v1.40.0",
    "GRPCMESH_NAMESPACE": "mesh-system",
    "GRPCMESH_WEBHOOK_PORT": "9443",
    "GRPCMESH_WEBHOOK_HOST": "grpcmesh-control.mesh-system.svc",
    "GRPCMESH_WEBHOOK_SECRET": "grpcmesh-webhook-tls",
    "GRPCMESH_WEBHOOK_CONFIGS": "grpcmesh, other ",
    "GRPCMESH_MISSING_BACKENDS": "deny",
    "GRPCMESH_PEERING": "grpcmesh",
    "GRPCMESH_PEERING_PRIORITY": "random",
    "GRPCMESH_APPMESH_MESH_NAME": "shop",
    "GRPCMESH_APPMESH_EGRESS_FILTER": "ALLOW_ALL",
    "GRPCMESH_TRUST_DOMAIN": "prod.example.com",
    "GRPCMESH_WORKLOAD_CERT_TTL": "12h",
    "GRPCMESH_CERT_RENEW_FRACTION": "0.6",
    "GRPCMESH_MESH_CA_SECRET": "grpcmesh-mesh-ca",
}


def test_the_charts_environment() -> None:
    settings = RuntimeSettings.from_env(CHART_ENV)
    assert settings.render.proxy.image == "registry.example/envoy-distroless:v1.40.0"
    assert settings.namespace == "mesh-system"
    assert settings.webhook_secret == "grpcmesh-webhook-tls"
    assert settings.webhook_configurations == ("grpcmesh", "other")
    assert settings.missing_backends is MissingBackends.DENY
    assert settings.manages_webhook_tls
    assert settings.render.appmesh.mesh_name == "shop"
    assert settings.render.appmesh.egress_filter is EgressFilter.ALLOW_ALL
    identity = settings.render.identity
    assert identity.trust_domain == "prod.example.com"
    assert identity.ttl == dt.timedelta(hours=12)
    assert identity.renew_fraction == 0.6
    assert settings.mesh_ca_secret == "grpcmesh-mesh-ca"


def test_defaults_keep_the_documented_behaviour() -> None:
    settings = RuntimeSettings.from_env({})
    assert settings.missing_backends is MissingBackends.WARN
    assert settings.render.proxy.image.startswith("envoyproxy/envoy-distroless:")
    assert settings.peering_priority == 0
    assert settings.render.identity.trust_domain == "cluster.local"
    assert settings.render.identity.ttl == dt.timedelta(hours=24)
    assert not settings.manages_webhook_tls
    assert settings.mesh_ca_secret is None  # no CA: plaintext, as before


def test_listeners_can_stay_on_loopback() -> None:
    """Run outside a pod (a benchmark, a laptop), nothing need listen beyond 127.0.0.1."""
    settings = RuntimeSettings.from_env(
        {
            "GRPCMESH_XDS_HOST": "127.0.0.1",
            "GRPCMESH_METRICS_HOST": "127.0.0.1",
            "GRPCMESH_LIVENESS": "http://127.0.0.1:8081/healthz",
        }
    )
    assert settings.xds_host == settings.metrics_host == "127.0.0.1"
    assert settings.liveness_endpoint == "http://127.0.0.1:8081/healthz"
    assert RuntimeSettings.from_env({}).metrics_host == "0.0.0.0"  # a pod: Prometheus scrapes


def test_random_priorities_differ_between_replicas() -> None:
    """Replicas of one Deployment share an environment; equal priorities would all pause."""
    drawn = {RuntimeSettings.from_env(CHART_ENV).peering_priority for _ in range(20)}
    assert all(priority > 0 for priority in drawn)
    assert len(drawn) > 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRPCMESH_WEBHOOK_PORT": "9443"}, "GRPCMESH_WEBHOOK_SECRET"),
        (
            {"GRPCMESH_WEBHOOK_PORT": "9443", "GRPCMESH_WEBHOOK_CERT": "/tls/tls.crt"},
            "go together",
        ),
        ({"GRPCMESH_MISSING_BACKENDS": "maybe"}, "maybe"),
        ({"GRPCMESH_PEERING_PRIORITY": "high"}, "high"),
        ({"GRPCMESH_APPMESH_EGRESS_FILTER": "SOME"}, "SOME"),
        ({"GRPCMESH_TRUST_DOMAIN": "Not Valid"}, "identity.trustDomain"),
        ({"GRPCMESH_WORKLOAD_CERT_TTL": "a day"}, "GRPCMESH_WORKLOAD_CERT_TTL"),
        ({"GRPCMESH_WORKLOAD_CERT_TTL": "0s"}, "identity.certificateTTL"),
        ({"GRPCMESH_CERT_RENEW_FRACTION": "1.5"}, "identity.renewFraction"),
        ({"GRPCMESH_TRACE_SAMPLING_RATIO": "2"}, "sampling ratio"),
        ({"GRPCMESH_OTLP_ENDPOINT": "collector"}, "host:port"),
    ],
)
def test_bad_combinations_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RuntimeSettings.from_env(env)


def test_mounted_files_turn_self_management_off() -> None:
    settings = RuntimeSettings.from_env(
        {
            "GRPCMESH_WEBHOOK_PORT": "9443",
            "GRPCMESH_WEBHOOK_CERT": "/tls/tls.crt",
            "GRPCMESH_WEBHOOK_KEY": "/tls/tls.key",
        }
    )
    assert settings.webhook_certfile == Path("/tls/tls.crt")
    assert not settings.manages_webhook_tls
