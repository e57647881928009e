"""Invariants of DESIGN.md, checked on random traces under every registered policy.

- no program or step lost or run twice; every program finishes;
- KV blocks allocated + free = total after every engine step (the engine's own checker,
  counting allocations from the requests, runs throughout), used never above capacity;
- clock monotonic and causality: arrival <= ready <= sent <= scheduled <= first token <=
  response <= tool done, and a program's next call is ready exactly when its tool returns;
- the STP terms plus idle add up to capacity x time on every backend;
- determinism: the same inputs and seed give the same summary, byte for byte, but wall time.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thundersim.metrics.recorder import KV_CATEGORIES
from thundersim.policies import names

from .conftest import make_program, run_sim

POLICIES = names()


@st.composite
def traces(draw):
    n = draw(st.integers(1, 8))
    prefix = draw(st.sampled_from([(None, 0), ("sys", 16), ("sys", 200), ("sys", 333)]))
    programs = []
    for i in range(n):
        k = draw(st.integers(1, 5))
        steps = [
            (
                draw(st.integers(1, 400)),
                draw(st.integers(1, 120)),
                draw(st.sampled_from([0.0, 0.2, 1.0, 3.5, 12.0])),
                j > 0 and draw(st.integers(0, 5)) == 0,  # sometimes a context reset
            )
            for j in range(k)
        ]
        programs.append(
            make_program(
                f"p{i}",
                steps,
                prefix=prefix,
                prep_s=draw(st.sampled_from([0.0, 0.5, 4.0])),
                arrival_s=float(i) * draw(st.sampled_from([0.0, 0.7])),
            )
        )
    return programs


runs = st.fixed_dictionaries(
    {
        "policy": st.sampled_from(POLICIES),
        "replicas": st.integers(1, 2),
        "concurrency": st.sampled_from([None, 1, 2, 3, 8]),
        "pressure": st.floats(1.0, 4.0),
        "block_size": st.sampled_from([4, 16]),
        "decay": st.sampled_from(["none", "pow:2", "exp:0.3"]),
        "dt": st.sampled_from([0.5, 2.0, 5.0]),
    }
)


def _run(programs, r, check=True):
    peak = max(p.peak_context for p in programs)
    # capacity between the largest single context and a few of them: real pressure
    kv = int(peak * r["pressure"]) + 2 * r["block_size"]  # one more: vLLM's null block
    return run_sim(
        programs,
        r["policy"],
        concurrency=r["concurrency"],
        kv_tokens=kv,
        replicas=r["replicas"],
        block_size=r["block_size"],
        decay=r["decay"],
        dt=r["dt"],
        check=check,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs=traces(), r=runs)
def test_invariants_hold_on_random_traces(programs, r):
    res = _run(programs, r)
    s = res.summary
    steps, progs, mem = res.steps, res.programs, res.memory

    # conservation: every program done, every step exactly once
    assert s["programs_completed"] == len(programs)
    assert (progs.status == "DONE").all()
    expected = {(p.id, i) for p in programs for i in range(len(p.steps))}
    got = list(zip(steps.program, steps.step, strict=True))
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected
    by_id = {p.id: p for p in programs}
    for row in steps.itertuples():
        spec = by_id[row.program]
        assert row.prompt_tokens == spec.prompt_tokens(row.step)
        assert row.output_tokens == spec.steps[row.step].output_tokens
        assert 0 <= row.cached_tokens < row.prompt_tokens

    # causality
    eps = 1e-9
    assert (steps.ready_t <= steps.sent_t + eps).all()
    assert (steps.sent_t <= steps.schedule_t + eps).all()
    assert (steps.schedule_t <= steps.first_token_t + eps).all()
    assert (steps.first_token_t <= steps.response_t + eps).all()
    assert (steps.response_t <= steps.done_t + eps).all()
    assert (progs.arrival_t <= progs.ready_t + eps).all()
    assert (progs.first_response_t <= progs.finish_t + eps).all()
    for _, g in steps.sort_values(["program", "step"]).groupby("program"):
        assert np.allclose(g.ready_t.values[1:], g.done_t.values[:-1])
    # the recorder sees time move forward only
    assert (np.diff(steps.done_t.values) >= -eps).all()
    assert (np.diff(mem.t.values) >= -eps).all()

    # memory: within capacity, every sample a full partition of it
    cap = s["kv_capacity_tokens"]  # the usable pool, in whole blocks
    assert cap % r["block_size"] == 0
    assert (mem.used_tokens <= cap).all()
    assert (mem[list(KV_CATEGORIES)].sum(axis=1) == cap).all()

    # STP terms + idle = capacity x time, per backend
    for acc in s["stp_per_backend"]:
        total = sum(acc[k] for k in KV_CATEGORIES)
        assert abs(total - cap * s["simulated_s"]) <= 1e-6 * max(1.0, cap * s["simulated_s"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs=traces(), r=runs)
def test_same_inputs_same_summary(programs, r):
    a = _run(programs, r, check=False).summary
    b = _run(programs, r, check=False).summary
    for volatile in ("wall_s", "sim_speed"):
        a.pop(volatile)
        b.pop(volatile)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
