"""Workload identity (mesh.model.identity): one function, the same SPIFFE form in both modes."""

from __future__ import annotations

import pytest

from grpcmesh_control.mesh.model.identity import (
    DEFAULT_TRUST_DOMAIN,
    SpiffeId,
    service_account_name,
    validate_trust_domain,
    workload_identity,
)


def test_a_cluster_workload_is_named_by_namespace_and_its_own_service_account() -> None:
    identity = workload_identity("orders", "shop", "prod.example.com")
    assert identity.uri == "spiffe://prod.example.com/ns/shop/sa/orders"
    assert identity.service_account == service_account_name("orders") == "orders"


def test_local_mode_has_the_same_form_in_the_default_namespace() -> None:
    assert str(workload_identity("payments")) == "spiffe://cluster.local/ns/default/sa/payments"
    assert DEFAULT_TRUST_DOMAIN == "cluster.local"


def test_the_uri_parses_back() -> None:
    identity = workload_identity("orders", "shop")
    assert SpiffeId.parse(identity.uri) == identity


@pytest.mark.parametrize("domain", ["", "Upper.case", "has space", "a/b", ".leading", "x" * 256])
def test_a_bad_trust_domain_names_the_field(domain: str) -> None:
    with pytest.raises(ValueError, match=r"identity\.trustDomain"):
        validate_trust_domain(domain, "identity.trustDomain")


def test_a_bad_path_segment_is_refused() -> None:
    with pytest.raises(ValueError, match="namespace"):
        SpiffeId("cluster.local", "a/b", "orders")
    with pytest.raises(ValueError, match="serviceAccount"):
        SpiffeId("cluster.local", "shop", "..")
