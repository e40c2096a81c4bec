"""Local mode knows the protos it is given: descriptor sets beside the resources or named with
``up --descriptors``, on top of the reference set. A user's service then gets its retries from
its own ``idempotency_level``, and a typo in ``spec.methods`` is refused naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from google.protobuf import descriptor_pb2

from grpcmesh_control.host.reflection import exposed_pool
from grpcmesh_control.local import credential
from grpcmesh_control.local.clients import ApplyResult, ControlPlaneClient
from grpcmesh_control.local.controlplane import ControlPlane, ControlPlaneSettings
from grpcmesh_control.local.resources import load_resources
from grpcmesh_control.local.sources import RESOURCES_DIR
from grpcmesh_control.local.sources.descriptors import local_protos, read_descriptor_sets
from grpcmesh_control.mesh.catalogs import ProtoSet, reference_protos
from grpcmesh_control.mesh.errors import InvalidResourceSet
from grpcmesh_control.mesh.model import Idempotency
from grpcmesh_control.mesh.translate.policy import route_policies

REVIEWS = "shop.reviews.v1.ReviewService"
EXAMPLES = Path(__file__).parents[3] / "manifests" / "examples"


def reviews_set() -> bytes:
    proto = descriptor_pb2.FileDescriptorProto(
        name="shop/reviews/v1/reviews.proto", package="shop.reviews.v1", syntax="proto3"
    )
    proto.message_type.add(name="Review")
    service = proto.service.add(name="ReviewService")
    for name, level in [
        ("ListReviews", descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS),
        ("AddReview", descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN),
    ]:
        method = service.method.add(
            name=name, input_type=".shop.reviews.v1.Review", output_type=".shop.reviews.v1.Review"
        )
        method.options.idempotency_level = level
    return descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString()


def reviews_yaml(method: str = "ListReviews") -> str:
    return f"""
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {{name: reviews}}
spec:
  grpc: {{port: 50060, services: [{REVIEWS}]}}
  trafficPolicy: {{retries: {{attempts: 3}}}}
  methods:
    - name: {REVIEWS}/{method}
      timeout: 2s
"""


def test_a_set_beside_the_resources_drives_retries(tmp_path: Path) -> None:
    (tmp_path / "reviews.yaml").write_text(reviews_yaml())
    (tmp_path / "reviews.binpb").write_bytes(reviews_set())
    files, (reviews,) = load_resources([tmp_path])
    assert set(files) == {"reviews.yaml", "reviews.binpb"}  # both go to the run directory
    protos = local_protos(read_descriptor_sets(tmp_path))
    assert protos.catalog.lookup(REVIEWS, "ListReviews").idempotency is (  # type: ignore[union-attr]
        Idempotency.NO_SIDE_EFFECTS
    )
    retried = {p.path: p.retry.attempts for p in route_policies(reviews, protos.catalog) if p.retry}
    assert retried == {f"/{REVIEWS}/ListReviews": 3}  # AddReview is not safe to repeat
    # the reference protos stay known
    assert set(reference_protos().catalog.service_names) < set(protos.catalog.service_names)


def test_a_named_set_is_read_and_a_typo_in_spec_methods_is_refused(tmp_path: Path) -> None:
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "reviews.yaml").write_text(reviews_yaml("ListReveiws"))
    protos = tmp_path / "protos" / "reviews.binpb"
    protos.parent.mkdir()
    protos.write_bytes(reviews_set())
    with pytest.raises(InvalidResourceSet) as refused:
        load_resources([tmp_path / "res"], [protos])
    assert (
        f"spec.methods[0].name: {REVIEWS} has no method ListReveiws "
        "(it has: AddReview, ListReviews)" in str(refused.value)
    )
    # without the set the service is unknown, so its method names cannot be checked
    load_resources([tmp_path / "res"])


def test_a_file_that_is_not_a_descriptor_set_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "reviews.yaml").write_text(reviews_yaml())
    (tmp_path / "reviews.binpb").write_bytes(b"this is not protobuf\xff")
    with pytest.raises(InvalidResourceSet, match=r"^reviews\.binpb: not a serialized"):
        load_resources([tmp_path])
    with pytest.raises(FileNotFoundError, match=r"missing\.binpb"):
        read_descriptor_sets(tmp_path / "missing.binpb")


def test_a_later_set_replaces_a_file_of_the_same_name() -> None:
    first = ProtoSet.parse(reviews_set())
    changed = descriptor_pb2.FileDescriptorSet.FromString(reviews_set())
    changed.file[0].service[0].method[
        0
    ].options.idempotency_level = descriptor_pb2.MethodOptions.IDEMPOTENT
    merged = first.merged(ProtoSet.parse(changed.SerializeToString()))
    assert len(merged.files) == 1
    info = merged.catalog.lookup(REVIEWS, "ListReviews")
    assert info is not None and info.idempotency is Idempotency.IDEMPOTENT


def test_the_control_plane_takes_a_set_dropped_in_while_it_runs(tmp_path: Path) -> None:
    resources = tmp_path / "resources"
    resources.mkdir()
    (resources / "reviews.yaml").write_text(reviews_yaml())
    cp = ControlPlane(ControlPlaneSettings(tmp_path))
    cp.sources.reload()
    cp.publisher.rebuild()

    def retried() -> dict[str, int]:
        registry = cp.publisher.registry
        assert registry is not None
        (reviews,) = [s for s in registry.services if s.name == "reviews"]
        return {
            p.path: p.retry.attempts for p in route_policies(reviews, registry.catalog) if p.retry
        }

    assert retried() == {}  # protos unknown: nothing is safe to retry
    assert cp.reload_protos() is False  # nothing changed

    (resources / "reviews.binpb").write_bytes(reviews_set())
    assert cp.reload_protos() is True
    cp.publisher.rebuild()
    assert retried() == {f"/{REVIEWS}/ListReviews": 3}
    assert cp.protos.catalog.knows(REVIEWS)

    (resources / "reviews.binpb").write_bytes(b"not a descriptor set\xff")
    assert cp.reload_protos() is False
    assert any("reviews.binpb: not a serialized" in p for p in cp.host.status()["problems"])
    assert cp.protos.catalog.knows(REVIEWS)  # the last valid protos stay


# --- grpcmesh apply carries descriptor sets ----------------------------------------------


def other_set(name: str = "shop/reviews/v1/reviews.proto", message: str = "Other") -> bytes:
    """A set holding ``name``, defining ``shop.reviews.v1.<message>``."""
    proto = descriptor_pb2.FileDescriptorProto(name=name, package="shop.reviews.v1")
    proto.message_type.add(name=message)
    return descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString()


@pytest.fixture
def running_cp(tmp_path: Path) -> ControlPlane:
    """A control plane on a run directory holding only a catalog resource."""
    resources = tmp_path / "resources"
    resources.mkdir()
    (resources / "catalog.yaml").write_text((EXAMPLES / "catalog.yaml").read_text())
    cp = ControlPlane(ControlPlaneSettings(tmp_path))
    cp.sources.reload()
    cp.publisher.rebuild()
    return cp


async def apply_over_http(cp: ControlPlane, yaml_text: str, sets: dict[str, bytes]) -> ApplyResult:
    """What ``grpcmesh apply`` sends: the CLI's client, the control plane's HTTP app."""
    async with TestServer(cp.http_app(), host="127.0.0.1") as server:
        token = credential.read(cp.settings.state_dir)
        async with ControlPlaneClient(f"127.0.0.1:{server.port}", token=token) as client:
            return await client.apply("reviews.yaml", yaml_text, sets)


def snapshot(directory: Path) -> list[tuple[str, bytes]]:
    return sorted((p.name, p.read_bytes()) for p in directory.iterdir())


async def test_an_apply_brings_its_protos_into_the_running_mesh(running_cp: ControlPlane) -> None:
    cp = running_cp
    resources = cp.settings.state_dir / RESOURCES_DIR
    result = await apply_over_http(cp, reviews_yaml(), {"reviews.binpb": reviews_set()})
    assert result.ok, result.message
    assert json.loads(result.message)["descriptors"] == ["reviews.binpb"]
    assert (resources / "reviews.binpb").read_bytes() == reviews_set()
    cp.publisher.rebuild()
    registry = cp.publisher.registry
    assert registry is not None
    (reviews,) = [s for s in registry.services if s.name == "reviews"]
    # retries from the set's idempotency options: ListReviews is safe, AddReview is not
    retried = {
        p.path: p.retry.attempts for p in route_policies(reviews, registry.catalog) if p.retry
    }
    assert retried == {f"/{REVIEWS}/ListReviews": 3}
    # reflection at the ingress describes it
    pool, described = exposed_pool(cp.protos, [REVIEWS])
    assert described == (REVIEWS,)
    assert set(pool.FindServiceByName(REVIEWS).methods_by_name) == {"ListReviews", "AddReview"}
    # and spec.methods is now checked against it: a typo is refused, naming the field
    refused = await apply_over_http(cp, reviews_yaml("ListReveiws"), {})
    assert not refused.ok
    assert f"spec.methods[0].name: {REVIEWS} has no method ListReveiws" in refused.message


async def test_a_typo_in_spec_methods_is_refused_with_the_set_that_defines_the_methods(
    running_cp: ControlPlane,
) -> None:
    resources = running_cp.settings.state_dir / RESOURCES_DIR
    before = snapshot(resources)
    refused = await apply_over_http(
        running_cp, reviews_yaml("ListReveiws"), {"reviews.binpb": reviews_set()}
    )
    assert not refused.ok
    assert "spec.methods[0].name" in refused.message
    assert snapshot(resources) == before  # not even the (valid) set was kept
    assert not running_cp.protos.catalog.knows(REVIEWS)


@pytest.mark.parametrize(
    ("existing", "sets", "message"),
    [
        pytest.param(
            {},
            {"reviews.binpb": b"not protobuf\xff"},
            "reviews.binpb: not a serialized FileDescriptorSet",
            id="corrupt",
        ),
        pytest.param(
            {"other.binpb": other_set()},
            {"reviews.binpb": reviews_set()},
            "reviews.binpb: shop/reviews/v1/reviews.proto differs from the one in other.binpb",
            id="same-proto-file-other-content",
        ),
        pytest.param(
            {"other.binpb": other_set("shop/reviews/v1/other.proto", "Review")},
            {"reviews.binpb": reviews_set()},
            "duplicate symbol 'shop.reviews.v1.Review'",
            id="a-symbol-defined-twice",
        ),
        pytest.param(
            {},
            {".reviews.binpb": reviews_set()},
            ".reviews.binpb: a descriptor set's file name is at most 200 letters",
            id="a-hidden-name",
        ),
        pytest.param(
            {},
            {"reviews.proto": reviews_set()},
            "reviews.proto: a descriptor set's file name ends with .binpb",
            id="not-binpb",
        ),
    ],
)
async def test_a_bad_descriptor_set_refuses_the_apply_as_a_whole(
    running_cp: ControlPlane, existing: dict[str, bytes], sets: dict[str, bytes], message: str
) -> None:
    cp = running_cp
    resources = cp.settings.state_dir / RESOURCES_DIR
    for name, data in existing.items():
        (resources / name).write_bytes(data)
    cp.reload_protos()
    protos, before = cp.protos, snapshot(resources)
    refused = await apply_over_http(cp, reviews_yaml(), sets)
    assert not refused.ok
    assert message in refused.message
    assert snapshot(resources) == before
    assert cp.protos is protos
    assert [s.name for s in cp.sources.resources.services] == ["catalog"]


def test_up_refuses_conflicting_sets_as_apply_does(tmp_path: Path) -> None:
    (tmp_path / "reviews.yaml").write_text(reviews_yaml())
    (tmp_path / "reviews.binpb").write_bytes(reviews_set())
    (tmp_path / "other.binpb").write_bytes(other_set())
    with pytest.raises(InvalidResourceSet, match=r"differs from the one in other\.binpb"):
        load_resources([tmp_path])


def test_an_import_no_set_holds_is_refused_naming_the_file(tmp_path: Path) -> None:
    proto = descriptor_pb2.FileDescriptorProto(
        name="a/a.proto", package="a", dependency=["b/b.proto", "google/protobuf/empty.proto"]
    )
    sets = {"a.binpb": descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString()}
    with pytest.raises(InvalidResourceSet) as refused:
        local_protos(sets)
    assert str(refused.value) == (
        "a.binpb: a/a.proto: imports b/b.proto, which no descriptor set holds "
        "(build the set with --include_imports)"
    )
    # a well-known type comes from the protobuf runtime
    del proto.dependency[0]
    sets = {"a.binpb": descriptor_pb2.FileDescriptorSet(file=[proto]).SerializeToString()}
    assert local_protos(sets).catalog is not None
