"""``grpcmesh status``'s table: each endpoint's identity and certificate expiry (a dash where
it holds none, e.g. a plaintext mesh or a disconnected sidecar)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from grpcmesh_control.cli.app import _status_table


def _endpoint(replica: str, identity: str | None, not_after: str | None) -> dict[str, Any]:
    return {
        "replica": replica,
        "address": "127.0.0.1:50051",
        "ready": True,
        "restarts": {"app": 0, "sidecar": 0},
        "connected": identity is not None,
        "acked_version": "v1",
        "nack_error": None,
        "identity": identity,
        "certificate": None if not_after is None else {"not_after": not_after, "serial": "1f"},
    }


def test_the_table_shows_each_endpoints_identity_and_certificate_expiry() -> None:
    doc = {
        "ingress": "127.0.0.1:8080",
        "control_plane": "127.0.0.1:9901",
        "config_version": "abc",
        "services": [
            {
                "name": "payments",
                "endpoints": [
                    _endpoint(
                        "v1-0",
                        "spiffe://cluster.local/ns/default/sa/payments",
                        "2026-12-06T04:00:00.250+00:00",
                    ),
                    _endpoint("v1-1", None, None),
                ],
            }
        ],
        "gateway": {
            **_endpoint(
                "",
                "spiffe://cluster.local/ns/default/sa/grpcmesh-ingress",
                "2026-12-06T05:30:00.000+00:00",
            ),
            "restarts": 0,
        },
    }
    console = Console(width=400, no_color=True, record=True)
    console.print(_status_table(doc))
    lines = console.export_text().splitlines()
    row = next(line for line in lines if "v1-0" in line)
    assert "spiffe://cluster.local/ns/default/sa/payments" in row
    assert "2026-12-06 04:00:00Z" in row
    missing = next(line for line in lines if "v1-1" in line)
    assert "spiffe://" not in missing and "Z" not in missing.split("v1")[-1]
    ingress = next(line for line in lines if "(ingress)" in line)
    assert "sa/grpcmesh-ingress" in ingress and "2026-12-06 05:30:00Z" in ingress
