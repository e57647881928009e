"""SimBackend: one vLLM replica, driven directly with requests."""

from __future__ import annotations

import asyncio
import math

import pytest
import simpy

from thundersim.core.backend import Backend, KVIntrospection, KVSnapshot, Request
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
    assert eng.stats().extra["iterations"] == 2 + 9
    prefill = (1e-3 + 512e-6) + (1e-3 + 488e-6)
    assert math.isclose(u.first_token_time, prefill, rel_tol=1e-9)
    assert math.isclose(u.finish_time, prefill + 9 * (1e-3 + 1e-6), rel_tol=1e-9)
    assert eng.kv.pool.used == 0  # nothing referenced once done
    assert eng.kv.pool.cached_free == 1009 // 16  # full blocks stay cached


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
    assert eng.kv.pool.resident["new"] == 30
    assert eng.kv.pool.resident["old"] < 30
    look = eng.kv.pool.lookup(None, 0, "new", 500)
    assert look.own_hit == 30


def test_preemption_by_recompute_when_blocks_run_out():
    """Two long decodes in a pool too small for both: the later one is preempted, recomputed
    from its cached prefix, and both still finish with every output token."""
    env, eng = make_engine(capacity=640, budget=1024)
    a = submit(env, eng, "a", 200, 150)
    b = submit(env, eng, "b", 200, 150)
    env.run(until=60)
    assert a["usage"].output_tokens == 150 and b["usage"].output_tokens == 150
    stats = eng.stats()
    assert stats.preemptions >= 1
    assert b["usage"].preemptions >= 1 and a["usage"].preemptions == 0  # latest admitted goes
    assert stats.recompute_tokens > 0


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
    # vLLM's pool of kv_capacity // 16 blocks, less its null block
    assert eng.capacity_tokens == (setup.kv_capacity_tokens // 16 - 1) * 16
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
    assert eng.kv.pool.pinned_total == 30
    req = Request("a", 1, 200, 1, None, 0, env.now, 0, chain_id="a\x001")
    eng.submit(req, lambda u: None)  # the reset call: a different chain, leaves the pin alone
    env.run(until=3)
    assert eng.kv.pool.pinned_total == 30
    env.run(until=7)
    assert eng.kv.pool.pinned_total == 0
    assert eng.kv.pool.resident["a"] == 30  # back in the cache, evictable again


def test_a_queue_blocked_for_good_is_reported_not_simulated_forever():
    """An engine with calls queued and nothing running for minutes of simulated time is a
    deadlock the run reports (here: every block pinned by a policy that pins forever)."""
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


# ---- the Backend and KVIntrospection protocols -----------------------------------------------


def test_simbackend_has_every_member_of_the_backend_protocol():
    """Attributes, methods and async lifecycle of core.backend.Backend; the model name is the
    one the constructor is given ("" without one); connect/refresh/close do nothing."""
    members = {n for n in dir(Backend) if not n.startswith("_")} | set(Backend.__annotations__)
    env, eng = make_engine(model="m-7b")
    missing = [n for n in sorted(members) if not hasattr(eng, n)]
    assert not missing, missing
    assert eng.model == "m-7b" and make_engine()[1].model == ""
    before = eng.stats()
    for call in (eng.connect, eng.refresh, eng.close):
        assert asyncio.run(call()) is None
    assert eng.stats() == before
    assert isinstance(eng, KVIntrospection)


def test_submit_takes_a_failure_callback_that_a_simulated_replica_never_calls():
    """The third argument of Backend.submit: accepted, and every call still ends in on_done
    (also with the old two-argument form)."""
    env, eng = make_engine(capacity=640, budget=1024)
    done, failed = [], []
    for pid in ("a", "b"):  # too long to decode side by side: one is preempted
        req = Request(pid, 0, 200, 150, None, 0, env.now, 0)
        eng.submit(req, done.append, lambda r, exc: failed.append((r, exc)))
    eng.submit(Request("c", 0, 50, 5, None, 0, env.now, 0), done.append)
    env.run(until=60)
    assert len(done) == 3 and not failed
    assert eng.stats().preemptions >= 1


def recorder_view(eng, is_acting) -> KVSnapshot:
    """What the Recorder computed from the engine's internals before KVSnapshot existed
    (metrics/recorder.py, Recorder.sample: the block categories, the pool's counts, the
    queues), read from the engine's parts, as a snapshot: blocks x block size."""
    B = eng.kv.block_size
    kv = eng.kv.breakdown(eng.scheduler.prefilling.values(), is_acting)
    queued = min((s.num_tokens for s in eng.scheduler.waiting), default=math.nan)
    return KVSnapshot(
        used_tokens=eng.kv.pool.used * B,
        cached_tokens=eng.kv.pool.cached_free * B,
        running=len(eng.scheduler.running),
        waiting=len(eng.scheduler.waiting),
        decode=kv["decode"] * B,
        prefill=kv["prefill"] * B,
        recompute=kv["recompute"] * B,
        cached_acting=kv["cached_acting"] * B,
        cached_other=kv["cached_other"] * B,
        empty=kv["empty"] * B,
        waiting_for_memory=eng.scheduler.waiting_for_memory(),
        min_queued_tokens=queued,
    )


def same_snapshot(a: KVSnapshot, b: KVSnapshot) -> bool:
    nan = math.isnan(a.min_queued_tokens) and math.isnan(b.min_queued_tokens)
    fields = {k: v for k, v in a.__class__.__dataclass_fields__.items() if k != "min_queued_tokens"}
    same = all(getattr(a, k) == getattr(b, k) for k in fields)
    return same and (nan or a.min_queued_tokens == b.min_queued_tokens)


def test_kv_snapshot_is_what_the_recorder_read_from_the_engine_in_tokens():
    """Sampled through a run with a shared prompt, prefill, recompute after preemption, a
    queue blocked on memory and cached KV of 'acting' programs: kv_snapshot equals the values
    the Recorder derived from kv_breakdown, the pool and the queues, and the categories add up
    to the capacity."""
    env, eng = make_engine(capacity=1024, budget=256)
    for i in range(6):
        submit(env, eng, f"p{i}", 300 + 40 * i, 60, prefix="sys", prefix_tokens=128, known=200)
    acting = lambda key: key in ("p0", "p2")  # noqa: E731
    seen = {"blocked": 0, "queued": 0, "recompute": 0, "acting": 0}
    t = 0.0
    while eng.scheduler.running or eng.scheduler.waiting:
        t += 0.003
        env.run(until=t)
        snap = eng.kv_snapshot(acting)
        assert same_snapshot(snap, recorder_view(eng, acting)), t
        cats = (snap.decode, snap.prefill, snap.recompute, snap.cached_acting)
        assert sum(cats) + snap.cached_other + snap.empty == eng.capacity_tokens
        seen["blocked"] += snap.waiting_for_memory
        seen["queued"] += snap.waiting > 0
        seen["recompute"] += snap.recompute > 0
        seen["acting"] += snap.cached_acting > 0
    assert all(seen.values()), seen
    assert math.isnan(eng.kv_snapshot(acting).min_queued_tokens)


# ---- one model of progress -------------------------------------------------------------------


def test_progress_is_computed_of_total_tokens_and_skip_ahead_is_invisible_in_it():
    """At every finish (the events a skipped run ends at), each running request's computed
    and total tokens are the same with and without skip-ahead; a decoding request has
    computed all of its tokens but the newest."""

    def progress_at_finishes(skip_ahead):
        env, eng = make_engine(capacity=8192, budget=512, skip_ahead=skip_ahead)
        log = []

        def on_done(usage, pid):
            state = sorted(
                (s.request.program_id, s.num_computed_tokens, s.num_tokens, s.is_decoding)
                for s in eng.scheduler.running.values()
            )
            log.append((pid, usage.output_tokens, state))

        for i, (prompt, output) in enumerate([(700, 40), (300, 90), (1200, 25), (64, 130)]):
            req = Request(f"p{i}", 0, prompt, output, None, 0, 0.0, 0)
            eng.submit(req, lambda u, pid=f"p{i}": on_done(u, pid))
        env.run(until=10)
        return log

    fast, slow = progress_at_finishes(True), progress_at_finishes(False)
    assert fast == slow and len(fast) == 4
    for _, _, state in fast:
        for _, computed, total, decoding in state:
            assert computed <= total and (not decoding or total == computed + 1)


def test_a_preempted_request_keeps_its_output_and_recomputes_it():
    """Preemption drops the KV, not the progress of the output: the request comes back with
    num_tokens = prompt + output so far, computed 0, and finishes with every output token."""
    env, eng = make_engine(capacity=640, budget=1024)
    a = submit(env, eng, "a", 200, 150)
    b = submit(env, eng, "b", 200, 150)
    while not eng.stats().preemptions:
        env.step()
    (victim,) = eng.scheduler.waiting
    assert victim.request.program_id == "b" and victim.num_computed_tokens == 0
    assert victim.num_tokens == 200 + victim.num_output_tokens and victim.num_output_tokens > 0
    env.run(until=60)
    assert a["usage"].output_tokens == b["usage"].output_tokens == 150


@pytest.mark.parametrize(
    "profile",
    [
        FLAT,
        roofline_profile(make_setup()),
        # attention-dominated from an empty context: iterations grow ~100x over a long run, so
        # the mean-time guess is far off and the search falls back to the bisection
        LatencyProfile(
            overhead_s=1e-4, c_token=0.0, c_pair=1e-5, m_const=0.0, m_expert=0.0, m_kv=0.0
        ),
    ],
)
def test_a_cut_decode_run_stops_where_the_models_own_search_says(profile):
    """SimBackend._iterations_done_by (a guess checked on both sides) answers what
    StepTimeModel.decode_iters_done_by (a bisection) does, with the run time of its answer."""
    import random

    _, eng = make_engine(profile=profile)
    model = eng.latency
    rng = random.Random(5)
    for _ in range(300):
        n, k_max = rng.randint(1, 200), rng.choice([1, 2, 7, 100, 5000])
        ctx0 = n * rng.randint(1, 40_000)
        total = model.decode_run_time(n, ctx0, k_max)
        elapsed = rng.choice([0.0, total * rng.random(), total * (1 - 1e-12)])
        done, busy = eng._iterations_done_by(n, ctx0, elapsed, k_max, total)
        assert done == model.decode_iters_done_by(n, ctx0, elapsed, k_max)
        assert busy == model.decode_run_time(n, ctx0, done)


def _digest(result) -> str:
    """The steps and memory tables to the bit: every value's exact repr (plain Python
    scalars, so the digest does not depend on how numpy prints its own)."""
    import hashlib

    h = hashlib.sha256()
    for frame in (result.steps, result.memory):
        for row in frame.itertuples(index=False, name=None):
            h.update(repr(tuple(v.item() if hasattr(v, "item") else v for v in row)).encode())
    return h.hexdigest()[:16]


# Digests of the small trace's runs, recorded before the engine's speed-ups of issue 15 (its
# loop as callbacks instead of a SimPy process, the O(block_size) skip-ahead bound, the guessed
# boundary of a cut decode run): each of those must leave every timing, hit and sample
# unchanged, not just close. A deliberate change of the model changes them: re-record them then
# (and say why in the commit).
PINNED_RUNS = {
    ("vllm", 1, True): "f3cb01bc41b3bef7",
    ("vllm", 1, False): "dad148da80df3bee",
    ("vllm", 2, True): "4cc3fbaf1c7867d6",
    ("stp", 2, True): "ecceef2e7e8b96a3",
    ("continuum", 1, True): "ca89f81b8e52139f",
}


@pytest.mark.parametrize(("policy", "replicas", "skip_ahead"), list(PINNED_RUNS))
def test_the_engines_results_are_pinned_to_the_bit(small_trace, policy, replicas, skip_ahead):
    """Preemption (vllm at 2500 tokens), skip-ahead and the per-iteration reference, two
    replicas, a pausing policy and TTL pins (continuum): the same tables, to the bit, as the
    engine gave before it was made faster."""
    result = run_sim(
        small_trace, policy, concurrency=8, kv_tokens=2500, replicas=replicas, skip_ahead=skip_ahead
    )
    assert _digest(result) == PINNED_RUNS[(policy, replicas, skip_ahead)]


def test_gauges_are_the_stats_gauges():
    """SimBackend.gauges() (what routers read of every backend per call) says what stats()
    says, through a run with preemption."""
    from thundersim.policies import make_policy
    from thundersim.sim.catalog import make_setup
    from thundersim.sim.simulate import RunConfig, simulate
    from thundersim.traces.loader import load_trace

    seen = []
    from thundersim.sim import engine as engine_mod

    original = engine_mod.SimBackend.gauges

    def checked(self):
        g = original(self)
        s = self.stats()
        seen.append(g == (s.used_tokens, s.running, s.waiting))
        return g

    engine_mod.SimBackend.gauges = checked
    try:
        specs = load_trace("traces/swe.jsonl")[:24]
        simulate(specs, make_policy("vllm"), RunConfig(setup=make_setup(), replicas=2, concurrency=24,
                                          tool_manager=None))  # fmt: skip
    finally:
        engine_mod.SimBackend.gauges = original
    assert len(seen) > 100 and all(seen)
