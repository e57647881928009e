"""Whole runs: feeding modes, horizons, interruption, replicas."""

from __future__ import annotations

import json

import numpy as np
import pytest
from thundersim.policies import make_policy

from thundersim.sim.catalog import make_setup
from thundersim.sim.simulate import RunConfig, simulate

from .conftest import make_program, run_sim


def test_closed_loop_never_exceeds_the_concurrency(small_trace):
    res = run_sim(small_trace, "stp", concurrency=3, kv_tokens=50_000)
    p = res.programs
    events = sorted(
        [(t, 1) for t in p.arrival_t] + [(t, -1) for t in p.finish_t], key=lambda e: (e[0], e[1])
    )
    live = np.cumsum([d for _, d in events])
    assert live.max() == 3
    # a finished program is replaced at once by the next one of the trace
    assert sorted(p.arrival_t)[3] == pytest.approx(sorted(p.finish_t)[0])


def test_open_loop_programs_arrive_at_their_trace_times():
    programs = [make_program(f"o{i}", [(50, 5, 1.0)], arrival_s=7.5 * i) for i in range(4)]
    res = run_sim(programs, "vllm", concurrency=None, kv_tokens=50_000)
    assert list(res.programs.sort_values("program").arrival_t) == [0.0, 7.5, 15.0, 22.5]


def test_horizon_caps_simulated_time_and_keeps_partial_results(small_trace):
    """An open loop stopped at a horizon: the run ends there, keeps what it finished, and its
    throughput is the steady window [warm-up, horizon]."""
    programs = [make_program(f"o{i}", [(50, 5, 2.0)] * 4, arrival_s=3.0 * i) for i in range(12)]
    res = run_sim(programs, "vllm", concurrency=None, kv_tokens=50_000)
    full = res.summary["simulated_s"]
    capped = simulate(
        programs,
        make_policy("vllm"),
        RunConfig(
            setup=make_setup(kv_capacity_override=50_000), concurrency=None, horizon_s=full / 2
        ),
    )
    s = capped.summary
    assert s["simulated_s"] == pytest.approx(full / 2)
    assert 0 < s["steps_completed"] < res.summary["steps_completed"]
    assert s["throughput_metric"] == "steady"
    assert s["throughput_window_s"] == pytest.approx([full / 8, full / 2])


def test_interrupted_run_returns_and_writes_what_it_finished(small_trace, tmp_path):
    """Ctrl-C (KeyboardInterrupt) mid-run: the run stops, the summary says so, and the
    tables hold every step finished so far."""
    seen = []

    def progress(done, now):
        seen.append(done)
        if done >= 3:
            raise KeyboardInterrupt

    res = simulate(
        small_trace,
        make_policy("stp"),
        RunConfig(setup=make_setup(kv_capacity_override=50_000), concurrency=2),
        progress=progress,
    )
    s = res.summary
    assert s["interrupted"] is True
    assert 3 <= s["programs_completed"] < len(small_trace)
    res.write(tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps_completed"] == len(res.steps) > 0


def test_two_replicas_share_the_work(small_trace):
    res = run_sim(small_trace, "vllm", concurrency=6, kv_tokens=20_000, replicas=2)
    assert set(res.steps.backend) == {0, 1}
    assert len(res.summary["stp_per_backend"]) == 2
    assert set(res.memory.backend) == {0, 1}


def test_trace_that_cannot_fit_is_refused_before_running():
    big = [make_program("big", [(5000, 100, 0.0)])]
    with pytest.raises(ValueError, match="program big: its context reaches 5164 tokens"):
        run_sim(big, "vllm", kv_tokens=4000)


def test_policy_name_in_summary_and_whole_run_throughput(small_trace):
    res = run_sim(small_trace, "stp", concurrency=4, kv_tokens=50_000)
    s = res.summary
    assert s["policy"] == "stp" and s["concurrency"] == 4 and s["replicas"] == 1
    assert s["throughput_metric"] == "whole_run"
    assert s["throughput_window_s"] == [0.0, s["simulated_s"]]
    assert s["simulated_s"] == pytest.approx(res.programs.finish_t.max())
    assert s["throughput_steps_per_min"] == pytest.approx(len(res.steps) / (s["simulated_s"] / 60))
