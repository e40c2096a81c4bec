"""A real Envoy with a static configuration on loopback, standing in for a sidecar: a gRPC
listener whose routes (by path prefix) go to static clusters, some of which have no endpoint
or point at a closed port. Enough to see exactly what a caller receives when its own sidecar,
or the callee's, answers instead of the callee."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.test_control_plane_envoy import envoy_binary
from tests.loopback import LOCALHOST, free_port, poll

HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


@dataclass(frozen=True)
class Route:
    prefix: str
    cluster: str
    timeout: str = "5s"
    retry_on: str = ""
    retries: int = 0


def cluster(name: str, port: int | None) -> dict[str, Any]:
    """A cluster of one endpoint on 127.0.0.1:``port``, or of none (``port`` None)."""
    endpoints = (
        []
        if port is None
        else [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": LOCALHOST, "port_value": port}
                            }
                        }
                    }
                ]
            }
        ]
    )
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "typed_extension_protocol_options": HTTP2,
        "load_assignment": {"cluster_name": name, "endpoints": endpoints},
    }


def _route(route: Route) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": route.cluster, "timeout": route.timeout}
    if route.retry_on:
        action["retry_policy"] = {"retry_on": route.retry_on, "num_retries": route.retries}
    return {"match": {"prefix": route.prefix}, "route": action}


def bootstrap(
    listen: int, admin: int, routes: Sequence[Route], clusters: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "sidecar",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [_route(r) for r in routes],
                    # Reports retries to the caller, so it can tell a retried call.
                    "include_attempt_count_in_response": True,
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": "egress",
        "address": {"socket_address": {"address": LOCALHOST, "port_value": listen}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": LOCALHOST, "port_value": admin}}},
        "static_resources": {"listeners": [listener], "clusters": list(clusters)},
    }


@asynccontextmanager
async def static_envoy(
    workdir: Path, name: str, routes: Sequence[Route], clusters: Sequence[dict[str, Any]]
) -> AsyncIterator[str]:
    """Runs Envoy until the block ends; yields the listener's host:port once it is ready."""
    listen, admin = free_port(), free_port()
    config = workdir / f"{name}.envoy.json"
    config.write_text(json.dumps(bootstrap(listen, admin, routes, clusters)), encoding="utf-8")
    argv = [str(envoy_binary()), "-c", str(config), "--base-id", str(admin), "-l", "warning"]
    with (workdir / f"{name}.envoy.log").open("wb") as log:
        envoy = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        log_path = workdir / f"{name}.envoy.log"

        async def ready() -> bool:
            if envoy.poll() is not None:  # a config Envoy refuses: say why at once
                raise AssertionError(f"Envoy {name} exited: {log_path.read_text()[-2000:]}")
            return await _ready(admin)

        await poll(ready, f"Envoy {name} to be ready", timeout=30)
        yield f"{LOCALHOST}:{listen}"
    finally:
        envoy.terminate()
        await asyncio.to_thread(envoy.wait, 10)


async def _ready(admin: int) -> bool:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOCALHOST}:{admin}/ready", timeout=2) as r:
                return int(r.status) == 200
        except OSError:
            return False

    return await asyncio.to_thread(probe)
