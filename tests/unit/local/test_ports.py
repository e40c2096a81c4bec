"""Port allocation: distinct, free, below the kernel's ephemeral range."""

from __future__ import annotations

import random
import socket

from grpcmesh_control.local import ports


def test_ports_are_distinct_free_and_not_ephemeral() -> None:
    chosen = ports.allocate_ports(30, rng=random.Random(7))
    assert len(set(chosen)) == 30
    low = ports._ephemeral_low()
    assert all(ports._LOWEST <= p < low for p in chosen)
    for port in chosen:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_bound_port_is_never_chosen() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        rng = random.Random(1)
        # Offer the held port first every time: it must be skipped.
        candidates = iter([taken, taken, *range(ports._LOWEST, ports._LOWEST + 100)])
        rng.randrange = lambda *_: next(candidates)  # type: ignore[method-assign]
        assert taken not in ports.allocate_ports(3, rng=rng)


def test_a_port_handed_out_is_not_handed_out_again_before_it_is_bound() -> None:
    # Two callers drawing the same candidates (same seed): the second must not get the first's
    # ports, though nothing has bound them yet.
    first = ports.allocate_ports(5, rng=random.Random(42))
    second = ports.allocate_ports(5, rng=random.Random(42))
    assert not set(first) & set(second)
