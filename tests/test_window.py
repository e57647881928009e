"""The throughput measurement (thundersim.metrics.window): one definition and one window for every policy
of a comparison, a closed loop that never drains, and a policy built to game a per-run window
that gains nothing from this one."""

from __future__ import annotations

import pandas as pd
import pytest

from thundersim.core.policy import PolicyOptions, Restore
from thundersim.core.program import Status
from thundersim.metrics.window import (
    STEADY,
    WHOLE_RUN,
    IncomparableRuns,
    check_comparable,
    default_warmup,
    measure,
)
from thundersim.policies.vllm import VLLM
from thundersim.sim.catalog import make_setup
from thundersim.sim.simulate import RunConfig, simulate

from .conftest import make_program


# ---- the definition -----------------------------------------------------------------------------
def test_a_finite_run_is_measured_whole():
    m = measure([10.0, 20.0, 30.0, 60.0], end_s=120.0, horizon_s=None, warmup_s=None)
    assert m["throughput_metric"] == WHOLE_RUN
    assert m["throughput_steps_per_min"] == pytest.approx(2.0)  # 4 steps in 2 minutes
    assert m["throughput_window_s"] == [0.0, 120.0]
    assert m["throughput_steady_steps_per_min"] is None


def test_a_horizon_run_counts_only_steps_inside_warmup_to_horizon():
    done = [5.0, 59.9, 60.0, 90.0, 120.0, 120.1]
    m = measure(done, end_s=120.0, horizon_s=120.0, warmup_s=60.0)
    assert m["throughput_metric"] == STEADY
    assert m["throughput_window_s"] == [60.0, 120.0]
    assert m["throughput_steps_per_min"] == pytest.approx(3.0)  # 60, 90, 120 in one minute
    # its whole-run rate is reported beside it: every step / the run's length
    assert m["throughput_whole_run_steps_per_min"] == pytest.approx(60 * 6 / 120)


def test_default_warmup_is_a_quarter_of_the_horizon():
    assert default_warmup(7200.0) == 1800.0
    m = measure([], end_s=400.0, horizon_s=400.0, warmup_s=None)
    assert m["throughput_window_s"] == [100.0, 400.0]


@pytest.mark.parametrize(
    ("horizon", "warmup", "match"),
    [
        (None, 10.0, "needs a horizon"),
        (0.0, None, "horizon must be > 0"),
        (100.0, 100.0, "warm-up"),
    ],
)
def test_bad_windows_are_refused(horizon, warmup, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(horizon_s=horizon, warmup_s=warmup)


def test_runs_measured_differently_cannot_be_compared():
    steady = {"policy": "stp", "throughput_metric": STEADY, "throughput_window_s": [100, 400]}
    other = {"policy": "vllm", "throughput_metric": STEADY, "throughput_window_s": [0, 400]}
    whole = {"policy": "vllm", "throughput_metric": WHOLE_RUN, "throughput_window_s": [0, 350]}
    whole2 = {"policy": "stp", "throughput_metric": WHOLE_RUN, "throughput_window_s": [0, 410]}
    assert check_comparable([whole, whole2]) == (WHOLE_RUN,)  # each its own makespan: one kind
    with pytest.raises(IncomparableRuns, match="measure throughput differently"):
        check_comparable([steady, whole])
    with pytest.raises(IncomparableRuns):
        check_comparable([steady, other])


# ---- the never-draining closed loop -------------------------------------------------------------
def _trace(n=6, steps=3, tool_s=4.0):
    return [
        make_program(f"p{i}", [(200 + 50 * i, 20, tool_s)] * steps, prefix=("sys", 64))
        for i in range(n)
    ]


def _run(specs, policy, concurrency, horizon=None, warmup=None, kv=200_000):
    config = RunConfig(
        setup=make_setup(kv_capacity_override=kv),
        concurrency=concurrency,
        horizon_s=horizon,
        warmup_s=warmup,
        tool_manager=None,
        check_invariants=True,
    )
    return simulate(specs, policy, config, trace_name="test")


def test_a_recycled_closed_loop_keeps_n_programs_in_flight_until_the_horizon():
    specs = _trace()
    res = _run(specs, VLLM(), concurrency=4, horizon=300.0, warmup=60.0)
    s, p = res.summary, res.programs
    assert s["simulated_s"] == pytest.approx(300.0)
    assert s["programs_completed"] > 3 * len(specs)  # the 6-program trace went round several times
    assert p.program.is_unique
    assert {"p0", "p0#1", "p0#2"} <= set(p.program)  # fresh ids for every reuse
    # every program of a reuse has the shape of its original
    steps = res.steps
    for rid in ("p3#1", "p3#2"):
        ours = steps[steps.program == rid].prompt_tokens.tolist()
        orig = steps[steps.program == "p3"].prompt_tokens.tolist()
        assert ours == orig[: len(ours)]
    # at every moment until the horizon exactly 4 programs are in the system
    events = sorted(
        [(t, 1) for t in p.arrival_t] + [(t, -1) for t in p.finish_t.dropna()],
        key=lambda e: (e[0], e[1]),
    )
    live = pd.Series([d for _, d in events]).cumsum()
    assert live.max() == 4 and live.iloc[-1] == 4
    assert s["throughput_metric"] == STEADY and s["throughput_window_s"] == [60.0, 300.0]
    inside = steps[(steps.done_t >= 60.0) & (steps.done_t <= 300.0)]
    assert s["throughput_steps_per_min"] == pytest.approx(len(inside) / 4.0)


def test_a_horizon_run_is_deterministic():
    a = _run(_trace(), VLLM(), concurrency=4, horizon=200.0).summary
    b = _run(_trace(), VLLM(), concurrency=4, horizon=200.0).summary
    assert a["steps_completed"] == b["steps_completed"]
    assert a["throughput_steps_per_min"] == b["throughput_steps_per_min"]


# ---- a policy that games a per-run window ------------------------------------------------------
class Stall(VLLM):
    """An adversary: vLLM, except that it holds every call until `until_s`, then lets the backlog
    go at once. Under the per-run window this project used before (first program finish -> last
    program start) that backlog lands inside a window the stall itself made short."""

    name = "stall"
    tick_interval = 1.0

    def __init__(self, until_s: float):
        super().__init__(PolicyOptions())
        self.until_s = until_s

    def on_request(self, view, program):
        if view.now < self.until_s:
            return []  # WAITING with a ready call: the Cluster holds it
        return super().on_request(view, program)

    def on_tick(self, view):
        if view.now < self.until_s:
            return []
        return [
            Restore(p.id, 0)
            for p in view.programs.values()
            if p.status is Status.WAITING and p.pending
        ]


def _old_per_run_window(res) -> float:
    """The removed definition: steps done in [first finish, last start] per minute."""
    p, s = res.programs, res.steps
    w0, w1 = p.finish_t.min(), p.arrival_t.max()
    inside = s[(s.done_t >= w0) & (s.done_t <= w1)]
    return len(inside) / ((w1 - w0) / 60)


def test_stalling_fools_a_per_run_window_but_not_the_whole_run():
    """Open loop: 19 programs arriving every 5 s and a last one at 120 s; the adversary holds all
    work until 90 s (under the simulator's 120 s deadlock guard), so its first program finishes
    late and its backlog lands in a short [first finish, last start]. Under that window it
    reports several times vLLM's throughput (6.7x here); measured whole (steps / makespan) it
    cannot beat the policy it copies."""
    specs = [make_program(f"o{i}", [(300, 20, 5.0)] * 5, arrival_s=5.0 * i) for i in range(19)]
    specs.append(make_program("last", [(300, 20, 5.0)] * 5, arrival_s=120.0))
    honest = _run(specs, VLLM(), concurrency=None)
    gamer = _run(specs, Stall(until_s=90.0), concurrency=None)
    assert honest.summary["steps_completed"] == gamer.summary["steps_completed"] == 100
    # the old per-run window is fooled ...
    assert _old_per_run_window(gamer) > 3 * _old_per_run_window(honest)
    # ... the whole-run measurement is not
    assert gamer.summary["throughput_metric"] == honest.summary["throughput_metric"] == WHOLE_RUN
    assert gamer.summary["throughput_steps_per_min"] <= honest.summary[
        "throughput_steps_per_min"
    ] * (1 + 1e-9)


def test_stalling_across_a_fixed_window_moves_at_most_one_call_per_slot():
    """In a never-draining closed loop with a fixed window, holding work until the warm-up ends
    can carry at most one ready call per program slot into the window: the gain is bounded by
    N steps, whatever the policy does, and here it is no gain at all."""
    specs = _trace(n=6, steps=4, tool_s=3.0)
    n, horizon, warmup = 4, 600.0, 100.0
    honest = _run(specs, VLLM(), concurrency=n, horizon=horizon, warmup=warmup).summary
    gamer = _run(specs, Stall(until_s=warmup), concurrency=n, horizon=horizon, warmup=warmup)
    gamer = gamer.summary
    assert gamer["throughput_window_s"] == honest["throughput_window_s"]
    bound = 60.0 * n / (horizon - warmup)  # N extra steps over the window, per minute
    assert gamer["throughput_steps_per_min"] <= honest["throughput_steps_per_min"] + bound
    # and over the whole run the stall only loses
    assert (
        gamer["throughput_whole_run_steps_per_min"] < honest["throughput_whole_run_steps_per_min"]
    )
