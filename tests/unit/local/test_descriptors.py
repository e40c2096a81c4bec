"""Local mode knows the protos it is given: descriptor sets beside the resources or named with
``up --descriptors``, on top of the reference set. A user's service then gets its retries from
its own ``idempotency_level``, and a typo in ``spec.methods`` is refused naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from grpcmesh_control.local.resources import load_resources
from grpcmesh_control.local.sources.descriptors import local_protos, read_descriptor_sets
from grpcmesh_control.mesh.catalogs import ProtoSet, reference_protos
from grpcmesh_control.mesh.errors import InvalidResourceSet
from grpcmesh_control.mesh.model import Idempotency
from grpcmesh_control.mesh.translate.policy import route_policies

REVIEWS = "shop.reviews.v1.ReviewService"


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
    from grpcmesh_control.local.controlplane import ControlPlane, ControlPlaneSettings

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
