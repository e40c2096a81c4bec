"""The API client edge: what goes on the wire for each ``ApplyStrategy``, and how failures are
translated. kmock records every request, so the server-side-apply request (which kmock itself
cannot carry out) is checked for the shape a real API server needs."""

from __future__ import annotations

import json

import kmock
import pytest

from grpcmesh_control.k8s import kinds
from grpcmesh_control.k8s_runtime import ApiError, ApplyStrategy, KubeClient, NotFound
from tests.integration.operator.conftest import Api, operator_settings

CONFIG_MAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "x-config", "namespace": "default", "labels": {"a": "b"}},
    "data": {"k": "v"},
}


async def test_server_side_apply_request_shape(api: Api, kmock: kmock.KubernetesEmulator) -> None:
    settings = operator_settings(api, apply_strategy=ApplyStrategy.SERVER_SIDE)
    client = await KubeClient.connect(settings)
    try:
        with pytest.raises(ApiError):  # kmock cannot apply; a real server creates or merges
            await client.apply(kinds.CONFIG_MAP, CONFIG_MAP)
    finally:
        await client.close()
    request = list(kmock)[-1]  # kmock is a view of the requests it served
    assert str(request.method).upper().endswith("PATCH")
    assert request.url.path == "/api/v1/namespaces/default/configmaps/x-config"
    assert request.headers["Content-Type"] == "application/apply-patch+yaml"
    assert dict(request.params) == {"fieldManager": "grpcmesh-operator", "force": "true"}
    assert json.loads(request.body) == CONFIG_MAP  # JSON is YAML: the full desired object


async def test_create_or_merge_and_translation(api: Api) -> None:
    client = await KubeClient.connect(operator_settings(api))
    try:
        await client.apply(kinds.CONFIG_MAP, CONFIG_MAP)
        changed = CONFIG_MAP | {"data": {"k": "w"}}
        await client.apply(kinds.CONFIG_MAP, changed)  # 409 on create -> merge patch
        got = await client.get(kinds.CONFIG_MAP, "default", "x-config")
        assert got is not None and got["data"] == {"k": "w"}
        assert await client.get(kinds.CONFIG_MAP, "default", "nope") is None
        assert await client.delete(kinds.CONFIG_MAP, "default", "nope") is False
        with pytest.raises(NotFound):
            await client.patch_status(kinds.DEPLOYMENT, "default", "nope", {})
        listed = await client.list_labelled(kinds.CONFIG_MAP, "default", {"a": "b"})
        assert [o["metadata"]["name"] for o in listed] == ["x-config"]
        # kmock ignores labelSelector: the client-side filter is what excludes this one.
        assert await client.list_labelled(kinds.CONFIG_MAP, "default", {"a": "c"}) == []
    finally:
        await client.close()
