"""The simulated preparation service keeps Fig 2c's fit on the range it was fitted on (24 to 96
preparations at once): beyond PREP_MAX_K preparations wait for a slot, so their time grows
linearly with k instead of along the extrapolated quadratic, and each run counts them."""

from __future__ import annotations

import pytest
import simpy

from thundersim.sim.sandbox import (
    PREP_A_S,
    PREP_B_S,
    PREP_MAX_K,
    PREP_REF_K,
    SimSandbox,
    batch_mean_prep,
    contended_prep,
    prep_seconds,
)
from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

from .conftest import run_sim


def _together(n: int, work: float = 29.9) -> tuple[dict[str, float], SimSandbox]:
    """n preparations of equal work requested at t = 0; key -> when each became ready."""
    env = simpy.Environment()
    box = SimSandbox(env)
    ready: dict[str, float] = {}
    for i in range(n):
        box.prepare(
            f"e{i}", EnvSpec(prep_s=work), work, lambda h: ready.setdefault(h, env.now), print
        )
    env.run()
    return ready, box


def test_inside_the_fitted_range_the_fit_is_unchanged():
    for k in range(PREP_REF_K, PREP_MAX_K + 1, 8):
        assert prep_seconds(k) == PREP_A_S + PREP_B_S * k * k
    ready, box = _together(PREP_MAX_K)
    expected = contended_prep(29.9, PREP_MAX_K)
    assert expected == pytest.approx(29.9 * 47.2 / 29.9, rel=0.02)  # the paper's 47.2 s at 96
    assert all(t == pytest.approx(expected, rel=1e-9) for t in ready.values())
    assert box.fit_report()["preps_queued_beyond_fit"] == 0
    assert box.fit_report()["peak_preps_requested"] == PREP_MAX_K


def test_the_fit_is_not_evaluated_beyond_the_range():
    assert prep_seconds(1536) == prep_seconds(PREP_MAX_K)
    assert contended_prep(29.9, 1536) == contended_prep(29.9, PREP_MAX_K)


def test_far_beyond_the_range_preparations_queue_in_waves():
    """1,536 at once (16 replicas x 96): 16 waves of 96, each served in the fitted time at 96;
    the quadratic would have given every one t(1536) = 4,780 s x 29.9 / t(24)."""
    n = 16 * PREP_MAX_K
    ready, box = _together(n)
    wave = contended_prep(29.9, PREP_MAX_K)
    times = sorted(ready.values())
    assert len(times) == n
    for i in range(16):  # wave i finishes at (i + 1) x the service time at 96
        assert times[i * PREP_MAX_K : (i + 1) * PREP_MAX_K] == pytest.approx(
            [(i + 1) * wave] * PREP_MAX_K, rel=1e-9
        )
    mean = sum(times) / n
    assert mean == pytest.approx(batch_mean_prep(29.9, n), rel=1e-9)
    assert mean == pytest.approx(8.5 * wave, rel=1e-9)  # 404 s
    quadratic = 29.9 * (PREP_A_S + PREP_B_S * n * n) / prep_seconds(PREP_REF_K)
    assert quadratic > 10 * mean  # 4,840 s: what the extrapolation gave
    report = box.fit_report()
    assert report["preps_queued_beyond_fit"] == n - PREP_MAX_K
    assert report["peak_preps_requested"] == n
    # the queued ones waited 1..15 waves: mean 8 waves
    assert report["prep_slot_wait_s_mean"] == pytest.approx(8 * wave, rel=1e-9)
    assert box.in_progress == 0


def test_the_time_grows_linearly_beyond_the_range():
    per_wave = [batch_mean_prep(29.9, w * PREP_MAX_K) for w in (2, 4, 8, 16)]
    steps = [b - a for a, b in zip(per_wave, per_wave[1:], strict=False)]
    wave = contended_prep(29.9, PREP_MAX_K)
    assert steps == pytest.approx([wave, 2 * wave, 4 * wave], rel=1e-9)  # (w + 1) / 2 waves
    assert batch_mean_prep(29.9, 50) == pytest.approx(contended_prep(29.9, 50))
    # the remainder past full waves is served faster, with fewer in service
    assert batch_mean_prep(29.9, PREP_MAX_K + 1) < batch_mean_prep(29.9, PREP_MAX_K) + wave


def test_a_slot_that_frees_goes_to_the_first_in_line():
    env = simpy.Environment()
    box = SimSandbox(env)
    ready: dict[str, float] = {}
    for i in range(PREP_MAX_K):
        box.prepare(
            f"s{i}", EnvSpec(prep_s=100.0), 100.0, lambda h: ready.setdefault(h, env.now), print
        )
    box.prepare(
        "short-first", EnvSpec(prep_s=100.0), 100.0, lambda h: ready.setdefault(h, env.now), print
    )
    box.prepare("late", EnvSpec(prep_s=1.0), 1.0, lambda h: ready.setdefault(h, env.now), print)
    assert box.in_service == PREP_MAX_K and box.in_progress == PREP_MAX_K + 2
    env.run()
    first = contended_prep(100.0, PREP_MAX_K)
    assert ready["short-first"] > ready["late"] > first  # both waited for the first wave
    assert ready["late"] == pytest.approx(first + contended_prep(1.0, 2))


def test_close_drops_the_queued_ones_too():
    env = simpy.Environment()
    box = SimSandbox(env)
    for i in range(PREP_MAX_K + 5):
        box.prepare(f"e{i}", EnvSpec(prep_s=10.0), 10.0, lambda h: None, print)
    box.close()
    assert box.in_progress == 0 and not box.existing


def _program(pid: str) -> ProgramSpec:
    return ProgramSpec(
        id=pid,
        workload="test",
        arrival_s=0.0,
        prefix_id="sys",
        prefix_tokens=64,
        env=EnvSpec(prep_s=30.0, disk_bytes=10**9, ports=1),
        steps=(StepSpec(100, 20, "bash", 5.0),),
    )


def test_the_run_summary_counts_preparations_beyond_the_range():
    many = [_program(f"p{i}") for i in range(PREP_MAX_K + 24)]
    res = run_sim(many, concurrency=len(many), kv_tokens=400_000, tool_manager="gc")
    env = res.summary["env"]
    assert env["preps_queued_beyond_fit"] == 24
    assert env["peak_preps_requested"] == PREP_MAX_K + 24
    assert env["prep_slot_wait_s_mean"] == pytest.approx(contended_prep(30.0, PREP_MAX_K))
    few = run_sim(many[:PREP_MAX_K], concurrency=PREP_MAX_K, kv_tokens=400_000, tool_manager="gc")
    assert few.summary["env"]["preps_queued_beyond_fit"] == 0
