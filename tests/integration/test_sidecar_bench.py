"""``bench/sidecar_overhead.py`` runs end to end (not timed: the benchmark measures, this test
only proves it works): h2load against the server direct, the mesh's generated sidecar pair
(plaintext and mTLS) and a bare Envoy pair, with the gRPC check on every path before and after
the rounds; and ``bench/mtls_handshake.py``, new connections at a sidecar's inbound listener with
and without mTLS."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.shared import REPO


def test_the_sidecar_benchmark_measures_all_four_paths() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.sidecar_overhead", "--rounds", "1", "--seconds", "0.5",
         "--rate", "100"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for mode in ("direct", "mesh", "mtls", "bare"):
        assert f": {mode}" in run.stdout, run.stdout
    failed = re.findall(r"round \d+: +\w+ .* failed (\d+)", run.stdout)
    assert len(failed) == 4 and set(failed) == {"0"}, run.stdout
    assert "some calls failed" not in run.stdout
    assert "mesh/bare" in run.stdout and "mtls/mesh" in run.stdout


def test_the_proxyless_benchmark_measures_all_three_paths() -> None:
    # A grpc.aio client direct, through the sidecar pair, and proxyless over xds:/// (the
    # control plane in the benchmark's process, the server's sidecar kept).
    run = subprocess.run(
        [sys.executable, "-m", "bench.sidecar_overhead", "--client", "grpc", "--rounds", "1",
         "--seconds", "0.5", "--rate", "100"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    failed = re.findall(r"round \d+: +(\w+) .* failed (\d+)", run.stdout)
    assert sorted(failed) == [("direct", "0"), ("mesh", "0"), ("proxyless", "0")], run.stdout
    assert "some calls failed" not in run.stdout
    assert "proxyless - mesh" in run.stdout


def test_the_handshake_benchmark_handshakes_with_mtls_only() -> None:
    # A few new connections per mode: curl at the callee sidecar's inbound listener, and curl
    # through the caller's sidecar, which opens a new connection to the callee per call. The
    # mTLS ones move the callee listener's ssl.handshake counter by one each, the plaintext ones
    # not at all; Envoy to Envoy resumes TLS sessions unless the caller keeps none. (The
    # benchmark also exits non-zero when a call fails or a counter is off.)
    n = 4
    run = subprocess.run(
        [sys.executable, "-m", "bench.mtls_handshake", "--connections", str(n), "--rounds", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pattern = r"round \d+: ([\w-]+) +(\d+) connections .* ssl\.handshake \+(\d+), failed (\d+)"
    rounds = sorted(re.findall(pattern, run.stdout))
    assert rounds == [
        ("mtls", str(n), str(n), "0"),
        ("pair-mtls", str(n), str(n), "0"),
        ("pair-mtls-full", str(n), str(n), "0"),
        ("pair-plaintext", str(n), "0", "0"),
        ("plaintext", str(n), "0", "0"),
    ], run.stdout
    out = " ".join(run.stdout.split())  # rich wraps long lines
    assert "mtls, negotiated at the callee (its ssl counters): versions TLSv1.3" in out, out
    # Sidecar to sidecar too: the mesh's upstream TLS allows 1.3 (Envoy's client default: 1.2).
    assert "pair-mtls, negotiated at the callee (its ssl counters): versions TLSv1.3" in out, out
    assert re.search(rf"pair-mtls, negotiated .* sessions resumed {n} of {n}", out), out
    assert re.search(rf"pair-mtls-full, negotiated .* sessions resumed 0 of {n}", out), out
    assert "callee Envoy CPU" in out and "caller Envoy CPU" in out
