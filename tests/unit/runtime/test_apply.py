"""``plan_apply``: what ``POST /apply`` validates and what it would write, without writing."""

from __future__ import annotations

import pytest

from grpcmesh_control.local.sources import plan_apply, plan_delete
from grpcmesh_control.mesh.errors import InvalidResourceSet
from grpcmesh_control.mesh.model import MethodCatalog

FIFTY_FIFTY = (b"weight: 90", b"weight: 50"), (b"weight: 10", b"weight: 50")


def fifty_fifty(payments: bytes) -> bytes:
    for old, new in FIFTY_FIFTY:
        payments = payments.replace(old, new)
    return payments


def refused(current: dict[str, bytes], filename: str, content: bytes) -> list[str]:
    with pytest.raises(InvalidResourceSet) as caught:
        plan_apply(current, filename, content)
    return [str(problem) for problem in caught.value.problems]


def test_a_file_of_the_same_name_is_replaced(
    example_files: dict[str, bytes], catalog: MethodCatalog
) -> None:
    content = fifty_fifty(example_files["payments.yaml"])
    plan = plan_apply(example_files, "payments.yaml", content, catalog=catalog)
    assert (plan.filename, plan.applied, plan.removed) == (
        "payments.yaml",
        ("default/payments",),
        (),
    )
    payments = next(s for s in plan.result.services if s.name == "payments")
    assert [v.weight for v in payments.versions] == [50, 50]
    assert len(plan.result.entries) == 4


def test_a_resource_moves_from_a_file_that_holds_only_it(
    example_files: dict[str, bytes],
) -> None:
    content = fifty_fifty(example_files["payments.yaml"])
    plan = plan_apply(example_files, "payments-canary.yml", content)
    assert plan.filename == "payments-canary.yaml"  # stored where the loader looks
    assert plan.removed == ("payments.yaml",)
    assert plan.result.file_of("default/payments") == "payments-canary.yaml"


def test_a_resource_in_a_shared_file_cannot_move(example_files: dict[str, bytes]) -> None:
    current = {"mesh.yaml": b"---\n".join(example_files.values())}
    assert refused(current, "payments.yaml", example_files["payments.yaml"]) == [
        "payments.yaml (MeshService default/payments): metadata.name: already defined in "
        "mesh.yaml together with other resources; apply it as mesh.yaml, or move it out of "
        "that file first"
    ]


def test_a_new_service_must_reference_existing_backends(
    example_files: dict[str, bytes],
) -> None:
    shipping = b"""
apiVersion: grpcmesh.io/v1alpha1
kind: MeshService
metadata: {name: shipping}
spec:
  grpc: {port: 9000, services: [test.v1.Shipping]}
  backends: [{name: orders}, {name: couriers}]
"""
    assert refused(example_files, "shipping.yaml", shipping) == [
        "shipping.yaml (MeshService default/shipping): spec.backends[1].name: "
        "no MeshService couriers in the mesh"
    ]


def test_the_applied_file_is_blamed_for_a_conflict_even_if_it_sorts_first(
    example_files: dict[str, bytes],
) -> None:
    # "a-orders.yaml" < "orders.yaml": file order alone would blame the existing resource.
    clone = example_files["orders.yaml"].replace(b"name: orders\n", b"name: orders-next\n")
    assert refused(example_files, "a-orders.yaml", clone) == [
        "a-orders.yaml (MeshService default/orders-next): spec.grpc.services[0]: "
        "grpcmesh.shop.v1.OrderService is already served by MeshService default/orders "
        "(orders.yaml)"
    ]


def test_an_invalid_document_is_refused_before_anything_else(
    example_files: dict[str, bytes],
) -> None:
    content = example_files["payments.yaml"].replace(b"weight: 10", b"weight: 0")
    assert refused(example_files, "payments.yaml", content) == [
        "payments.yaml (MeshService default/payments): spec.versions: weights sum to 90, "
        "must be 100"
    ]


def test_an_invalid_file_already_there_blocks_the_apply(example_files: dict[str, bytes]) -> None:
    current = {**example_files, "broken.yaml": b"{"}
    (problem,) = refused(current, "payments.yaml", example_files["payments.yaml"])
    assert problem.startswith("broken.yaml: not valid YAML")


def test_an_empty_apply_is_refused(example_files: dict[str, bytes]) -> None:
    assert refused(example_files, "empty.yaml", b"# nothing\n---\n") == [
        "empty.yaml: no MeshService documents"
    ]


@pytest.mark.parametrize(
    "filename",
    ["../payments.yaml", "sub/payments.yaml", ".hidden.yaml", "payments.txt", ".yaml", "x y.yaml"],
)
def test_the_file_name_must_be_a_plain_yaml_name(
    example_files: dict[str, bytes], filename: str
) -> None:
    (problem,) = refused(example_files, filename, example_files["payments.yaml"])
    assert problem.startswith(f"X-Filename: {filename!r} is not a plain file name ending in .yaml")


def test_an_unknown_field_is_refused_with_the_field_it_resembles(
    example_files: dict[str, bytes],
) -> None:
    content = example_files["payments.yaml"].replace(b"  versions:", b"  version:")
    (problem,) = refused(example_files, "payments.yaml", content)
    assert "spec.version: unknown field (did you mean versions?)" in problem


# --- delete ------------------------------------------------------------------------------------


def test_deleting_a_service_nothing_calls_removes_its_file(
    example_files: dict[str, bytes],
) -> None:
    plan = plan_delete(example_files, "orders")  # it calls the others; nothing calls it
    assert plan.removed == ("orders.yaml",)
    assert "orders" not in {s.name for s in plan.result.services}


def test_a_service_still_called_cannot_be_deleted(example_files: dict[str, bytes]) -> None:
    with pytest.raises(InvalidResourceSet) as refused:
        plan_delete(example_files, "payments")
    message = str(refused.value)
    assert "orders.yaml (MeshService default/orders)" in message
    assert "no MeshService payments in the mesh" in message


def test_deleting_an_unknown_service_names_the_known_ones(
    example_files: dict[str, bytes],
) -> None:
    with pytest.raises(InvalidResourceSet, match=r"no MeshService 'reviews'.*known: catalog"):
        plan_delete(example_files, "reviews")
