"""The supervisor's restart back-off, as a kubelet's CrashLoopBackOff: doubling, capped, and
reset by a run that lasted."""

from __future__ import annotations

from grpcmesh_control.local.supervisor import RestartBackoff, SupervisorSettings


def test_restart_delays_double_up_to_the_cap_and_reset_after_a_stable_run() -> None:
    settings = SupervisorSettings(
        restart_backoff_s=0.2, restart_backoff_max_s=1.0, stable_after_s=10.0
    )
    backoff = RestartBackoff(settings)
    crashing = [backoff.delay(ran_for=0.5) for _ in range(5)]
    assert crashing == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(ran_for=10.0) == 0.2  # it ran long enough: a new crash, not a loop
    assert backoff.delay(ran_for=0.1) == 0.4
