"""SimBackend: one vLLM replica, driven directly with requests."""

from __future__ import annotations

import math

import simpy

from thundersim.core.backend import Request
from thundersim.sim.catalog import make_setup
from thundersim.sim.engine import SimBackend
from thundersim.sim.latency import LatencyModel, LatencyProfile, roofline_profile

from .conftest import make_program, run_sim

FLAT = LatencyProfile(  # every iteration costs 1 ms + 1 us per token: easy to reason about
    overhead_s=1e-3, c_token=1e-6, c_pair=0.0, m_const=0.0, m_expert=0.0, m_kv=0.0
)


def make_engine(capacity=4096, block_size=16, budget=512, profile=FLAT, **kw):
    env = simpy.Environment()
    eng = SimBackend(
        env,
        0,
        capacity,
        LatencyModel(profile),
        block_size=block_size,
        max_batched_tokens=budget,
        check=True,
        **kw,
    )
    return env, eng


def submit(env, eng, pid, prompt, output, prefix=None, prefix_tokens=0, known=0):
    done = {}
    req = Request(pid, 0, prompt, output, prefix, prefix_tokens, env.now, known)
    eng.submit(req, lambda u: done.setdefault("usage", u))
    return done


def test_single_request_runs_chunked_prefill_then_one_token_per_iteration():
    """A 1000-token prompt under a 512-token budget takes 2 prefill iterations (the second
    samples the first token), then output-1 decode iterations."""
    env, eng = make_engine()
    done = submit(env, eng, "a", 1000, 10)
    env.run(until=10)
    u = done["usage"]
    assert u.output_tokens == 10 and u.cached_tokens == 0 and u.preemptions == 0
    assert eng.iterations == 2 + 9
    prefill = (1e-3 + 512e-6) + (1e-3 + 488e-6)
    assert math.isclose(u.first_token_time, prefill, rel_tol=1e-9)
    assert math.isclose(u.finish_time, prefill + 9 * (1e-3 + 1e-6), rel_tol=1e-9)
    assert eng.pool.used == 0  # nothing referenced once done
    assert eng.pool.cached_free == 1009 // 16  # full blocks stay cached


def test_shared_prefix_hits_across_programs_and_own_context_hits_next_call():
    """The shared system prompt is computed once; a program's next call hits its own blocks."""
    env, eng = make_engine()
    first = submit(env, eng, "a", 400, 5, prefix="sys", prefix_tokens=320)
    env.run(until=1)
    second = submit(env, eng, "b", 400, 5, prefix="sys", prefix_tokens=320)
    env.run(until=2)
    assert first["usage"].cached_tokens == 0
    assert second["usage"].cached_tokens == 320  # 20 shared blocks
    again = submit(env, eng, "a", 450, 5, prefix="sys", prefix_tokens=320, known=404)
    env.run(until=3)
    # a's first call computed 404 tokens: 25 full blocks = 400 tokens come back
    assert again["usage"].cached_tokens == 400
    assert again["usage"].recompute_tokens == 4  # tokens 400..403 were computed before


def test_lru_eviction_reclaims_the_least_recently_released_program_first():
    env, eng = make_engine(capacity=1024, budget=1024)
    submit(env, eng, "old", 480, 1)
    env.run(until=1)
    submit(env, eng, "new", 480, 1)
    env.run(until=2)
    # 60 blocks cached of 64; a 320-token request needs 20: evicts 'old' (tail first)
    submit(env, eng, "third", 320, 1)
    env.run(until=3)
    assert eng.pool.resident["new"] == 30
    assert eng.pool.resident["old"] < 30
    look = eng.pool.lookup(None, 0, "new", 500)
    assert look.own_hit == 30


def test_preemption_by_recompute_when_blocks_run_out():
    """Two long decodes in a pool too small for both: the later one is preempted, recomputed
    from its cached prefix, and both still finish with every output token."""
    env, eng = make_engine(capacity=640, budget=1024)
    a = submit(env, eng, "a", 200, 150)
    b = submit(env, eng, "b", 200, 150)
    env.run(until=60)
    assert a["usage"].output_tokens == 150 and b["usage"].output_tokens == 150
    assert eng.preemptions >= 1
    assert b["usage"].preemptions >= 1 and a["usage"].preemptions == 0  # latest admitted goes
    assert eng.recompute_tokens > 0


def test_request_larger_than_the_pool_is_refused_up_front():
    env, eng = make_engine(capacity=256)
    try:
        submit(env, eng, "huge", 300, 10)
    except ValueError as exc:
        assert "KV capacity" in str(exc)
    else:
        raise AssertionError("a request that can never fit must be refused")


def test_skip_ahead_reproduces_the_per_iteration_reference_exactly(small_trace):
    """The closed-form decode runs are an optimisation only: every step's timing, every hit
    and every preemption equals the iteration-by-iteration run."""
    fast = run_sim(small_trace, "vllm", concurrency=8, kv_tokens=2500)
    slow = run_sim(small_trace, "vllm", concurrency=8, kv_tokens=2500, skip_ahead=False)
    assert fast.summary["preemptions"] == slow.summary["preemptions"] > 0
    assert fast.summary["engine_iterations"] == slow.summary["engine_iterations"]
    assert fast.summary["kv_hit_rate"] == slow.summary["kv_hit_rate"]
    a = fast.steps.sort_values(["program", "step"]).reset_index(drop=True)
    b = slow.steps.sort_values(["program", "step"]).reset_index(drop=True)
    assert (a.prompt_tokens == b.prompt_tokens).all()
    assert (a.cached_tokens == b.cached_tokens).all()
    assert (a.done_t - b.done_t).abs().max() < 1e-6


def test_kv_capacity_from_hardware_by_default():
    setup = make_setup()
    env = simpy.Environment()
    eng = SimBackend(env, 0, setup.kv_capacity_tokens, LatencyModel(roofline_profile(setup)))
    assert eng.capacity_tokens == setup.kv_capacity_tokens // 16 * 16
    assert eng.stats().capacity_tokens == eng.capacity_tokens


def test_thrashing_appears_under_pressure_and_not_without_it():
    """Same trace: with room for every context nothing is preempted and hits are high; with a
    pool that holds a fraction of them, vLLM preempts and the hit rate drops."""
    programs = [
        make_program(f"q{i}", [(600, 60, 3.0)] + [(150, 40, 3.0)] * 8, prefix=("sys", 256))
        for i in range(10)
    ]
    roomy = run_sim(programs, "vllm", concurrency=10, kv_tokens=200_000)
    tight = run_sim(programs, "vllm", concurrency=10, kv_tokens=9_000)
    assert roomy.summary["preemptions"] == 0
    assert roomy.summary["kv_hit_rate"] > 0.8
    assert tight.summary["kv_hit_rate"] < roomy.summary["kv_hit_rate"]
    assert tight.summary["recompute_tokens"] > roomy.summary["recompute_tokens"]


def test_a_pin_expires_even_after_the_program_moved_to_a_new_chain():
    """Continuum pins a program's cached KV; if the program's next call starts a new chain (a
    context reset), the old chain's pin must still expire, or its blocks leak forever."""
    env, eng = make_engine(capacity=2048, budget=1024)
    submit(env, eng, "a", 480, 1)
    env.run(until=1)
    eng.pin("a", ttl_s=5.0)
    assert eng.pool.pinned_total == 30
    req = Request("a", 1, 200, 1, None, 0, env.now, 0, chain_id="a\x001")
    eng.submit(req, lambda u: None)  # the reset call: a different chain, leaves the pin alone
    env.run(until=3)
    assert eng.pool.pinned_total == 30
    env.run(until=7)
    assert eng.pool.pinned_total == 0
    assert eng.pool.resident["a"] == 30  # back in the cache, evictable again


def test_a_queue_blocked_for_good_is_reported_not_simulated_forever():
    """An engine with calls queued and nothing running for minutes of simulated time is a
    deadlock the run reports (here: every block pinned by a policy that pins forever)."""
    import pytest

    from thundersim.core.policy import Pin, Policy, Restore
    from thundersim.sim.catalog import make_setup
    from thundersim.sim.simulate import RunConfig, simulate

    class PinForever(Policy):
        name = "pin_forever"

        def on_arrival(self, view, program):
            return [Restore(program.id, 0)]

        def on_response(self, view, program):
            return [Pin(program.id, 1e9)]

    programs = [make_program(f"p{i}", [(600, 10, 1.0)] * 3, prefix=(None, 0)) for i in range(4)]
    config = RunConfig(setup=make_setup(kv_capacity_override=2000), concurrency=4)
    with pytest.raises(RuntimeError, match="deadlocked"):
        simulate(programs, PinForever(), config)
