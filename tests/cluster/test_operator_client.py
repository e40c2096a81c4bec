"""The operator's API client against the real API server: server-side apply as field owner
``grpcmesh-operator`` (fields it stops applying are removed, others' fields stay), the
create-or-merge strategy kept for emulators, label selectors, how failures are translated,
optimistic concurrency, and replicas racing for one webhook certificate and one mesh root."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from grpcmesh_control.cluster.controller import ApplyStrategy, Conflict, KubeClient, NotFound
from grpcmesh_control.cluster.controller.mesh_ca import ensure_mesh_ca
from grpcmesh_control.cluster.controller.webhook_tls import ensure_webhook_tls
from grpcmesh_control.cluster.objects import kinds
from grpcmesh_control.cluster.objects.mesh_ca import mesh_ca_from_secret
from grpcmesh_control.cluster.objects.webhook_tls import TlsBundle
from grpcmesh_control.mesh.ca import CaError
from tests.cluster.kube import KubeCluster
from tests.cluster.operator_harness import operator_settings


def config_map(namespace: str, data: dict[str, str], labels: dict[str, str] | None = None) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x-config", "namespace": namespace, "labels": labels or {"a": "b"}},
        "data": data,
    }


@pytest.fixture
async def client(kube: KubeCluster) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(operator_settings(kube))
    try:
        yield client
    finally:
        await client.close()


def managers(kube: KubeCluster, namespace: str) -> dict[str, str]:
    fields = kube.kubectl(
        "get", "configmap", "x-config", "-n", namespace, "--show-managed-fields",
        "-o", "jsonpath={.metadata.managedFields}",
    )  # fmt: skip
    return {m["manager"]: m["operation"] for m in json.loads(fields)}


async def test_server_side_apply_owns_exactly_what_it_applies(
    kube: KubeCluster, namespace: str, client: KubeClient
) -> None:
    await client.apply(kinds.CONFIG_MAP, config_map(namespace, {"k": "v", "old": "x"}))
    assert managers(kube, namespace) == {"grpcmesh-operator": "Apply"}
    # Someone else adds a field; the next apply drops one of ours and changes another.
    patch = json.dumps({"data": {"theirs": "1"}})
    kube.kubectl("patch", "configmap", "x-config", "-n", namespace, "--type=merge", "-p", patch)
    await client.apply(kinds.CONFIG_MAP, config_map(namespace, {"k": "w"}))
    got = kube.get("configmap", "x-config", namespace)
    assert got["data"] == {"k": "w", "theirs": "1"}  # ours removed, theirs kept
    # A field someone else changed is taken back (force): the desired state wins.
    patch = json.dumps({"data": {"k": "drift"}})
    kube.kubectl("patch", "configmap", "x-config", "-n", namespace, "--type=merge", "-p", patch)
    await client.apply(kinds.CONFIG_MAP, config_map(namespace, {"k": "w"}))
    assert kube.get("configmap", "x-config", namespace)["data"]["k"] == "w"


async def test_create_or_merge_writes_without_apply(kube: KubeCluster, namespace: str) -> None:
    """The strategy for emulators without server-side apply: POST, then merge-patch on 409.
    Unlike apply it cannot remove a field (the reason it is never used in a cluster)."""
    settings = operator_settings(kube, apply_strategy=ApplyStrategy.CREATE_OR_MERGE)
    client = await KubeClient.connect(settings)
    try:
        await client.apply(kinds.CONFIG_MAP, config_map(namespace, {"k": "v", "old": "x"}))
        await client.apply(kinds.CONFIG_MAP, config_map(namespace, {"k": "w"}))
    finally:
        await client.close()
    assert kube.get("configmap", "x-config", namespace)["data"] == {"k": "w", "old": "x"}
    assert set(managers(kube, namespace)) == {"grpcmesh-operator"}


async def test_reads_lists_and_translated_failures(
    kube: KubeCluster, namespace: str, client: KubeClient
) -> None:
    await client.apply(kinds.CONFIG_MAP, config_map(namespace, {"k": "v"}))
    other = config_map(namespace, {"k": "v"}, labels={"a": "c"})
    other["metadata"]["name"] = "y-config"
    await client.apply(kinds.CONFIG_MAP, other)
    assert await client.get(kinds.CONFIG_MAP, namespace, "nope") is None
    assert await client.delete(kinds.CONFIG_MAP, namespace, "nope") is False
    with pytest.raises(NotFound):
        await client.patch_status(kinds.DEPLOYMENT, namespace, "nope", {})
    listed = await client.list_labelled(kinds.CONFIG_MAP, namespace, {"a": "b"})
    assert [o["metadata"]["name"] for o in listed] == ["x-config"]
    # The selector is the server's: only matching objects come back.
    selected = await client.list_objects(kinds.CONFIG_MAP, namespace, "a=c")
    assert [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in selected] == [
        ("v1", "ConfigMap", "y-config")
    ]
    with pytest.raises(Conflict):
        await client.create(kinds.CONFIG_MAP, config_map(namespace, {"k": "v"}))


async def test_a_stale_resource_version_is_a_conflict(
    kube: KubeCluster, namespace: str, client: KubeClient
) -> None:
    """Optimistic concurrency, as the webhook certificate's renewal relies on: a merge patch
    carrying the resourceVersion it read is refused once someone else wrote in between."""
    written = await client.apply(kinds.CONFIG_MAP, config_map(namespace, {"k": "v"}))
    read = written["metadata"]["resourceVersion"]
    patch = json.dumps({"data": {"k": "theirs"}})
    kube.kubectl("patch", "configmap", "x-config", "-n", namespace, "--type=merge", "-p", patch)
    with pytest.raises(Conflict):
        await client.patch(
            kinds.CONFIG_MAP,
            namespace,
            "x-config",
            {"metadata": {"resourceVersion": read}, "data": {"k": "mine"}},
        )
    assert kube.get("configmap", "x-config", namespace)["data"] == {"k": "theirs"}


async def test_replicas_starting_together_agree_on_one_certificate(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    """Three replicas create the webhook Secret at once: the API server lets one create win
    (409 for the others), and every replica serves the winner's certificate."""
    clients = [await KubeClient.connect(operator_settings(kube)) for _ in range(3)]
    host = f"grpcmesh-control.{namespace}.svc"
    try:
        served = await asyncio.gather(
            *(
                ensure_webhook_tls(
                    client,
                    namespace=namespace,
                    secret="webhook-tls",
                    dns_names=[host],
                    configurations=(),
                    directory=tmp_path / str(i),
                    now=datetime.now(UTC),
                )
                for i, client in enumerate(clients)
            )
        )
    finally:
        for client in clients:
            await client.close()
    stored = TlsBundle.from_secret(kube.get("secret", "webhook-tls", namespace))
    assert stored is not None
    assert {(cert.read_bytes(), key.read_bytes()) for cert, key in served} == {
        (stored.cert, stored.key)
    }


async def test_replicas_starting_together_agree_on_one_mesh_root(
    kube: KubeCluster, namespace: str
) -> None:
    """Three replicas look for the mesh root at once: one create wins, the others get 409 and
    read it, so all sign with the same root; a later start reads it, never replaces it."""
    clients = [await KubeClient.connect(operator_settings(kube)) for _ in range(3)]
    now = datetime.now(UTC)
    try:
        found = await asyncio.gather(
            *(
                ensure_mesh_ca(client, namespace=namespace, secret="mesh-ca", now=now)
                for client in clients
            )
        )
        later = await ensure_mesh_ca(clients[0], namespace=namespace, secret="mesh-ca", now=now)
    finally:
        for client in clients:
            await client.close()
    stored = mesh_ca_from_secret(kube.get("secret", "mesh-ca", namespace))
    assert {ca.certificate for ca in [*found, later]} == {stored.certificate}
    assert stored.root == stored.certificate  # a self-signed root


async def test_a_broken_mesh_root_secret_is_reported_not_replaced(
    kube: KubeCluster, namespace: str, client: KubeClient
) -> None:
    kube.kubectl(
        "create", "secret", "generic", "mesh-ca", "-n", namespace, "--from-literal=tls.crt=x"
    )
    with pytest.raises(CaError, match=rf"Secret {namespace}/mesh-ca: data\.tls\.key is missing"):
        await ensure_mesh_ca(client, namespace=namespace, secret="mesh-ca", now=datetime.now(UTC))
    assert set(kube.get("secret", "mesh-ca", namespace)["data"]) == {"tls.crt"}
