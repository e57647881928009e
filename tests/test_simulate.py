"""Whole runs: feeding modes, horizons, interruption, replicas."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from thundersim.policies import make_policy
from thundersim.sim.catalog import make_setup
from thundersim.sim.simulate import RunConfig, simulate

from .conftest import StubBackend, make_program, run_sim


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


# ---- one lifecycle, two clocks ------------------------------------------------------------------
class _AnswersAtOnce(StubBackend):
    """A live-style replica (the rest of the Backend protocol from StubBackend): every call
    answered on the event loop's next turn (what the lifecycle does is under test, not an
    engine)."""

    def submit(self, request, on_done, on_failure):
        from thundersim.core.backend import Usage

        t = request.submit_time
        usage = Usage(request.prompt_tokens, 0, request.output_tokens, 0, 0, t, t, t, t)
        asyncio.get_running_loop().call_soon(on_done, usage)


def _three_programs():
    """Tool times far enough apart that the finishing order does not hang on timer jitter."""
    return [
        make_program("slow", [(50, 5, 0.15)] * 2),
        make_program("fast", [(50, 5, 0.02)] * 2),
        make_program("next", [(50, 5, 0.02), (50, 5, 0.0)]),
    ]


def test_the_same_lifecycle_runs_on_both_clocks():
    """A closed loop of two on the SimPy clock and on the event loop's: the same steps, the
    third program arrives when the first one finishes, and they finish in the same order."""
    from thundersim.live.driver import run_live

    specs = _three_programs()
    sim = simulate(
        specs,
        make_policy("vllm"),
        RunConfig(setup=make_setup(kv_capacity_override=50_000), concurrency=2, tool_manager=None),
    )
    live = asyncio.run(
        run_live(specs, make_policy("vllm"), [_AnswersAtOnce("instant")], 2, sample_dt=0.05)
    )
    for res in (sim, live):
        assert res.summary["programs_completed"] == 3
        assert sorted(zip(res.steps.program, res.steps.step, strict=True)) == sorted(
            (p.id, i) for p in specs for i in range(len(p.steps))
        )
        progs = res.programs.set_index("program")
        # (the event loop's clock moves on between the finish and the next arrival)
        assert progs.arrival_t["next"] == pytest.approx(progs.finish_t["fast"], abs=0.01)
    order = [list(r.programs.sort_values("finish_t").program) for r in (sim, live)]
    assert order[0] == order[1] == ["fast", "next", "slow"]
    # a simulated tool call takes exactly its trace time, a live one (a real wait) at least it
    both = live.steps.merge(sim.steps, on=["program", "step"], suffixes=("_live", "_sim"))
    assert (both.tool_s_live >= both.tool_s_sim - 1e-3).all()


class _RecordingSandbox:
    """A real-tool-environment provider stand-in: environments are ready at once, and the tool
    calls it is asked to run are recorded, not run."""

    prep_timeout_s = None  # ready at once: nothing to bound (the EnvProvider contract)

    def __init__(self):
        self.runs: list[tuple[str, str, float]] = []

    def prepare(self, key, spec, duration_s, on_ready, on_failed):
        on_ready(f"box-{key}")

    def teardown(self, handle):
        pass

    def close(self):
        pass

    async def run_tool(self, handle, tool, seconds):
        self.runs.append((handle, tool, seconds))
        await asyncio.sleep(seconds)


def test_a_live_tool_call_runs_in_its_programs_sandbox():
    """With a sandbox, each tool call of a program runs in that program's environment (and a
    step without a tool runs nothing)."""
    from thundersim.live.driver import run_live

    specs = _three_programs()
    box = _RecordingSandbox()
    res = asyncio.run(
        run_live(
            specs,
            make_policy("vllm"),
            [_AnswersAtOnce("instant")],
            2,
            sandbox=box,
            tool_manager="gc",
        )
    )
    assert res.summary["programs_completed"] == 3
    by_box: dict[str, list[float]] = {}
    for handle, tool, seconds in box.runs:
        assert tool == "bash"
        by_box.setdefault(handle, []).append(seconds)
    assert sorted(by_box.values()) == [[0.02], [0.02, 0.02], [0.15, 0.15]]
