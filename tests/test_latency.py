"""Roofline latency model: iteration time, closed-form decode runs, MoE experts, profiles, the
per-sequence cost (and that at c_seq = 0 it changes no simulated result by a bit)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from thundersim.sim.catalog import make_setup
from thundersim.sim.latency import LatencyModel, LatencyProfile, roofline_profile

SETUPS = {
    "glm46-h100": make_setup(),
    "glm46-h200": make_setup("H200"),
    "qwen3-235b-h100": make_setup(model="Qwen3-235B-A22B"),
    "llama8b-a100-bf16": make_setup(
        "A100-80G", "Llama-3.1-8B", tp=1, weight_dtype="bf16", kv_dtype="bf16"
    ),
    "qwen8b-5090-tp1": make_setup("RTX-5090", "Qwen3-8B", tp=1, weight_dtype="fp8"),
}
MODELS = {name: LatencyModel(roofline_profile(s)) for name, s in SETUPS.items()}
# The same setups with a host-side cost per sequence (a calibrated CPU vLLM's order: 80 us,
# against microseconds per token on a GPU): every closed form must carry it.
SEQ_COST_S = 80e-6
SEQ_MODELS = {
    name: LatencyModel(replace(roofline_profile(s), c_seq=SEQ_COST_S)) for name, s in SETUPS.items()
}

PROPERTY = settings(max_examples=150, deadline=None)


def explicit_decode_sum(lat: LatencyModel, n: int, ctx0: int, k: int) -> float:
    """The definition: k iterations, the j-th with n sequences of one token each and context
    sum ctx0 + n*j."""
    total = 0.0
    for j in range(k):
        ctx = ctx0 + n * j
        total += lat.iteration_time(n, ctx, ctx, n)
    return total


def line_values(lat: LatencyModel, n: int, ctx0: int, j: int) -> tuple[float, float]:
    """(compute, memory) seconds of decode iteration j, from the profile's definition."""
    p = lat.profile
    ctx = ctx0 + n * j
    compute = p.c_token * n + p.c_pair * ctx
    memory = p.m_const + p.m_expert * lat.experts_touched(n) + p.m_kv * ctx
    return compute, memory


def crossing_profile(n: int, ctx0: int, jcross: float, memory_first: bool) -> LatencyProfile:
    """A profile whose compute and memory lines of a decode run (n seqs, context sum ctx0)
    meet at iteration `jcross`: memory-bound before and compute-bound after when
    `memory_first`, the reverse otherwise. Its per-sequence cost (outside the max) moves no
    crossing."""
    slope_gap = 1e-9  # |c_pair - m_kv| per sequence
    if memory_first:
        c_pair, m_kv, c_token = 2e-9, 1e-9, 1e-6
        # memory - compute at j is (m_const + m_kv*ctx0) - (c_token*n + c_pair*ctx0) - gap*n*j
        m_const = c_token * n + (c_pair - m_kv) * ctx0 + slope_gap * n * jcross
    else:
        c_pair, m_kv, m_const = 1e-9, 2e-9, 1e-3
        # compute - memory at j is c_token*n + c_pair*ctx0 - m_const - m_kv*ctx0 - gap*n*j
        c_token = (m_const + (m_kv - c_pair) * ctx0 + slope_gap * n * jcross) / n
    return LatencyProfile(
        overhead_s=1e-4,
        c_token=c_token,
        c_pair=c_pair,
        m_const=m_const,
        m_expert=0.0,
        m_kv=m_kv,
        c_seq=3e-6,
        source="test: crossing lines",
    )


# ---- iteration time ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
@given(
    tokens=st.integers(1, 16384),
    pairs=st.floats(0, 1e10),
    kv=st.floats(0, 1e7),
)
@PROPERTY
def test_iteration_time_exceeds_the_overhead_for_any_non_empty_batch(name, tokens, pairs, kv):
    """A non-empty batch always costs more than the fixed per-step overhead (so the simulated
    clock always advances)."""
    lat = MODELS[name]
    assert lat.iteration_time(tokens, pairs, kv, 1) > lat.profile.overhead_s > 0


@pytest.mark.parametrize("name", sorted(MODELS))
@given(
    tokens=st.integers(1, 8192),
    pairs=st.floats(0, 1e9),
    kv=st.floats(0, 1e7),
    dt=st.integers(0, 8192),
    dp=st.floats(0, 1e9),
    dk=st.floats(0, 1e7),
    ds=st.integers(0, 256),
    with_seq_cost=st.booleans(),
)
@PROPERTY
def test_iteration_time_is_monotone_in_tokens_pairs_kv_read_and_sequences(
    name, tokens, pairs, kv, dt, dp, dk, ds, with_seq_cost
):
    """More tokens, attention pairs, KV read or sequences never make an iteration faster."""
    t = (SEQ_MODELS if with_seq_cost else MODELS)[name].iteration_time
    seqs = min(tokens, 64)
    base = t(tokens, pairs, kv, seqs)
    assert t(tokens + dt, pairs, kv, seqs) >= base
    assert t(tokens, pairs + dp, kv, seqs) >= base
    assert t(tokens, pairs, kv + dk, seqs) >= base
    assert t(tokens, pairs, kv, seqs + ds) >= base
    assert t(tokens + dt, pairs + dp, kv + dk, seqs + ds) >= base


def test_iteration_time_is_overhead_plus_the_larger_of_compute_and_memory():
    """t = overhead + max(compute, memory): a decode batch on GLM-4.6 is memory-bound (the
    weights are streamed), a big prefill chunk is compute-bound."""
    lat = MODELS["glm46-h100"]
    p = lat.profile
    for tokens, pairs, kv in [(1, 1000, 1000), (64, 64_000, 64_000), (8192, 3e7, 0)]:
        compute = p.c_token * tokens + p.c_pair * pairs
        memory = p.m_const + p.m_expert * lat.experts_touched(tokens) + p.m_kv * kv
        assert lat.iteration_time(tokens, pairs, kv, 1) == pytest.approx(
            p.overhead_s + max(compute, memory), rel=1e-12
        )
    decode_compute, decode_memory = line_values(lat, 1, 1000, 0)
    assert decode_memory > decode_compute
    assert p.c_token * 8192 > p.m_const + p.m_expert * lat.experts_touched(8192)


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_the_per_sequence_cost_adds_outside_the_max(name):
    """t = overhead + c_seq * seqs + max(compute, memory): host-side work per sequence overlaps
    neither term, so it adds the same seconds to a memory-bound decode batch as to a
    compute-bound prefill; the roofline has none (0 seconds per sequence)."""
    plain, seq = MODELS[name], SEQ_MODELS[name]
    assert plain.profile.c_seq == 0.0
    for tokens, pairs, kv, seqs in [
        (1, 1000, 1000, 1),
        (64, 64_000, 64_000, 64),
        (8192, 3e7, 0, 3),
    ]:
        base = plain.iteration_time(tokens, pairs, kv, seqs)
        assert plain.iteration_time(tokens, pairs, kv, 0) == base  # no term: seqs unused
        assert seq.iteration_time(tokens, pairs, kv, seqs) == pytest.approx(
            base + SEQ_COST_S * seqs, rel=1e-12
        )


# ---- closed-form decode runs -------------------------------------------------------------


@st.composite
def decode_runs(draw, k_max: int = 3000):
    n = draw(st.integers(1, 512))
    ctx0 = draw(st.integers(n, n * 100_000))
    k = draw(st.integers(0, k_max))
    return n, ctx0, k


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("models", [MODELS, SEQ_MODELS], ids=["roofline", "c_seq"])
@given(run=decode_runs())
@PROPERTY
def test_decode_run_time_equals_the_sum_of_its_iterations(models, name, run):
    """decode_run_time(n, ctx0, k) is exactly the sum over j < k of
    iteration_time(n, ctx0 + n*j, ctx0 + n*j, n), for every catalog setup, with and without a
    per-sequence cost."""
    n, ctx0, k = run
    lat = models[name]
    closed = lat.decode_run_time(n, ctx0, k)
    assert math.isclose(closed, explicit_decode_sum(lat, n, ctx0, k), rel_tol=1e-9, abs_tol=0)


@given(
    run=decode_runs(),
    where=st.one_of(
        st.tuples(st.just("fraction"), st.floats(0.05, 0.95)),
        st.tuples(st.just("iteration"), st.integers(1, 2999)),
    ),
    memory_first=st.booleans(),
)
@PROPERTY
def test_decode_run_time_is_exact_when_compute_and_memory_lines_cross_mid_run(
    run, where, memory_first
):
    """When the run starts memory-bound and ends compute-bound (or the reverse), the closed
    form still sums each iteration on its own side of the crossing. The crossing sits at a
    fraction of the run or exactly on an integer iteration (a tie)."""
    n, ctx0, k = run
    assume(k >= 2)
    kind, value = where
    jcross = value * k if kind == "fraction" else float(min(value, k - 1))
    lat = LatencyModel(crossing_profile(n, ctx0, jcross, memory_first))
    # The lines really cross inside the run, in the intended direction.
    c0, m0 = line_values(lat, n, ctx0, 0)
    c1, m1 = line_values(lat, n, ctx0, k)
    if memory_first:
        assert m0 > c0 and c1 > m1
    else:
        assert c0 > m0 and m1 > c1
    closed = lat.decode_run_time(n, ctx0, k)
    assert math.isclose(closed, explicit_decode_sum(lat, n, ctx0, k), rel_tol=1e-9, abs_tol=0)


@pytest.mark.parametrize("memory_first", [True, False])
@pytest.mark.parametrize("jcross", [-5.0, 0.0, 0.5, 3.0, 3.5, 9.0, 10.0, 50.0])
def test_decode_run_time_with_crossing_before_at_and_after_the_run(memory_first, jcross):
    """The crossing may lie before the run, on its first iteration, between iterations, on its
    last one or after it: every case matches the explicit sum."""
    n, ctx0, k = 8, 8000, 10
    lat = LatencyModel(crossing_profile(n, ctx0, jcross, memory_first))
    for kk in range(k + 1):
        assert math.isclose(
            lat.decode_run_time(n, ctx0, kk),
            explicit_decode_sum(lat, n, ctx0, kk),
            rel_tol=1e-9,
            abs_tol=0,
        )


def test_decode_run_time_with_parallel_lines():
    """Equal slopes (the lines never cross) sum the upper line."""
    for c_token, m_const in [(1e-3, 1e-4), (1e-5, 1e-2)]:
        prof = LatencyProfile(
            overhead_s=1e-4,
            c_token=c_token,
            c_pair=1e-9,
            m_const=m_const,
            m_expert=0.0,
            m_kv=1e-9,
        )
        lat = LatencyModel(prof)
        for k in (0, 1, 7, 100):
            assert math.isclose(
                lat.decode_run_time(4, 4000, k),
                explicit_decode_sum(lat, 4, 4000, k),
                rel_tol=1e-9,
                abs_tol=0,
            )


def test_decode_run_of_zero_iterations_takes_no_time():
    """k = 0 (and any k <= 0) is an empty run."""
    lat = MODELS["glm46-h100"]
    assert lat.decode_run_time(10, 1000, 0) == 0.0
    assert lat.decode_run_time(10, 1000, -3) == 0.0


def scan_iters_done_by(lat, n, ctx0, elapsed, k_max) -> int:
    for k in range(k_max + 1):
        if lat.decode_run_time(n, ctx0, k) >= elapsed:
            return k
    return k_max


@pytest.mark.parametrize("name", ["glm46-h100", "llama8b-a100-bf16"])
@pytest.mark.parametrize("models", [MODELS, SEQ_MODELS], ids=["roofline", "c_seq"])
@given(
    run=decode_runs(k_max=60),
    frac=st.floats(0.0, 1.3),
    on_boundary=st.booleans(),
)
@PROPERTY
def test_decode_iters_done_by_is_the_smallest_k_whose_run_time_reaches_elapsed(
    models, name, run, frac, on_boundary
):
    """decode_iters_done_by(n, ctx0, elapsed, k_max) is the smallest k <= k_max with
    decode_run_time(k) >= elapsed (k_max if none), as a linear scan finds it; elapsed exactly
    on an iteration boundary counts that iteration as done."""
    n, ctx0, k_max = run
    lat = models[name]
    if on_boundary:
        elapsed = lat.decode_run_time(n, ctx0, round(frac * k_max / 1.3))
    else:
        elapsed = frac * lat.decode_run_time(n, ctx0, k_max)
    got = lat.decode_iters_done_by(n, ctx0, elapsed, k_max)
    assert got == scan_iters_done_by(lat, n, ctx0, elapsed, k_max)
    assert 0 <= got <= k_max


@given(run=decode_runs(k_max=60), frac=st.floats(0.0, 1.0), memory_first=st.booleans())
@PROPERTY
def test_decode_iters_done_by_across_a_crossing(run, frac, memory_first):
    """The search stays exact when the run changes from memory- to compute-bound."""
    n, ctx0, k_max = run
    lat = LatencyModel(crossing_profile(n, ctx0, k_max / 2, memory_first))
    elapsed = frac * lat.decode_run_time(n, ctx0, k_max)
    assert lat.decode_iters_done_by(n, ctx0, elapsed, k_max) == scan_iters_done_by(
        lat, n, ctx0, elapsed, k_max
    )


# ---- MoE experts -------------------------------------------------------------------------


def test_moe_experts_touched_grows_with_the_batch_up_to_all_experts():
    """With uniform routing, one token touches its experts_per_token experts; more tokens touch
    strictly more experts while any are left, never more than the model has."""
    lat = MODELS["glm46-h100"]
    p = lat.profile
    assert p.n_experts == 160 and p.experts_per_token == 8
    assert lat.experts_touched(1) == pytest.approx(8, rel=1e-9)
    small = [lat.experts_touched(t) for t in range(1, 200)]
    assert all(b > a for a, b in zip(small, small[1:], strict=False))
    for tokens in (1, 2, 10, 100, 1000, 10_000, 1_000_000):
        assert lat.experts_touched(tokens) <= p.n_experts
    assert lat.experts_touched(10_000) == pytest.approx(p.n_experts)
    assert lat.experts_touched(0) == 0.0


def test_dense_model_touches_no_routed_experts():
    """A dense model has no routed experts: its weight traffic does not depend on the batch."""
    lat = MODELS["llama8b-a100-bf16"]
    assert lat.profile.n_experts == 0 and lat.profile.m_expert == 0
    for tokens in (0, 1, 64, 8192):
        assert lat.experts_touched(tokens) == 0


def test_moe_decode_iteration_reads_more_weights_for_bigger_batches():
    """On an MoE model a bigger decode batch touches more experts, so its memory term grows
    even with the same KV read."""
    lat = MODELS["glm46-h100"]
    assert lat.iteration_time(64, 0, 0, 1) > lat.iteration_time(1, 0, 0, 1)


# ---- profiles ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_latency_profile_round_trips_through_json(tmp_path, name):
    """save then load gives back an equal profile (a calibrated profile is a JSON file)."""
    prof = roofline_profile(SETUPS[name])
    path = tmp_path / "profile.json"
    prof.save(path)
    assert LatencyProfile.load(path) == prof
    assert json.loads(path.read_text())["source"] == prof.source


@pytest.mark.parametrize(
    "content",
    [
        None,  # missing file
        "{not json",
        "[1, 2, 3]",
        '{"overhead_s": 0.001}',
        '{"overhead_s": 0.001, "c_token": 1, "c_pair": 1, "m_const": 1, "m_expert": 1, '
        '"m_kv": 1, "surprise": 2}',
    ],
    ids=["missing", "bad-json", "not-object", "missing-fields", "unknown-field"],
)
def test_loading_a_bad_profile_raises_value_error_naming_the_file(tmp_path, content):
    """A missing, malformed or incomplete profile fails with the path in the message."""
    path = tmp_path / "bad-profile.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="bad-profile.json"):
        LatencyProfile.load(path)


def test_roofline_profile_charges_allreduce_only_with_tensor_parallelism():
    """TP > 1 adds two all-reduces per layer to every iteration's overhead; TP1 does not."""
    tp8 = roofline_profile(make_setup(model="Qwen3-8B"))
    tp1 = roofline_profile(make_setup(model="Qwen3-8B", tp=1))
    assert tp8.overhead_s > tp1.overhead_s
    assert tp8.overhead_s - tp1.overhead_s == pytest.approx(2 * 36 * 10e-6)


@pytest.mark.parametrize(
    "bad",
    [{"overhead_s": "fast"}, {"overhead_s": -0.001}, {"m_kv": None}, {"c_seq": -1e-6}],
    ids=str,
)
def test_loading_a_profile_with_invalid_values_raises_value_error_naming_the_file(tmp_path, bad):
    """Coefficients are non-negative seconds and the overhead is positive (it keeps the clock
    moving); a profile file that breaks this is refused at load time, naming the file."""
    data = {
        "overhead_s": 0.002,
        "c_token": 1e-6,
        "c_pair": 1e-10,
        "m_const": 1e-3,
        "m_expert": 0.0,
        "m_kv": 1e-8,
    }
    data.update(bad)
    path = tmp_path / "invalid-profile.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="invalid-profile.json"):
        LatencyProfile.load(path)


def test_a_profile_saved_before_the_per_sequence_cost_loads_with_none(tmp_path):
    """Profiles written before c_seq existed have no such field: they load with c_seq = 0 and
    time every batch as before; a calibrated c_seq round-trips through JSON."""
    prof = roofline_profile(SETUPS["llama8b-a100-bf16"])
    prof.save(tmp_path / "new.json")
    data = json.loads((tmp_path / "new.json").read_text())
    assert data.pop("c_seq") == 0.0
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert LatencyProfile.load(tmp_path / "old.json") == prof
    calibrated = replace(prof, c_seq=SEQ_COST_S)
    calibrated.save(tmp_path / "cal.json")
    assert LatencyProfile.load(tmp_path / "cal.json").c_seq == SEQ_COST_S


# ---- the engine counts sequences; c_seq = 0 changes nothing ------------------------------


FLAT_SEQ = LatencyProfile(  # 1 ms + 1 us per token + 50 us per sequence, compute only
    overhead_s=1e-3, c_token=1e-6, c_pair=0.0, m_const=0.0, m_expert=0.0, m_kv=0.0, c_seq=50e-6
)


def test_the_engine_charges_every_scheduled_request_once_per_iteration():
    """Two 300-token prompts admitted together under a 512-token budget: iteration 1 has two
    prefill chunks (300 + 212 tokens, 2 sequences), iteration 2 one decode and the second's
    last 88 tokens (89 tokens, 2 sequences), then both decode (2 tokens, 2 sequences)."""
    import simpy

    from thundersim.core.backend import Request
    from thundersim.sim.engine import SimBackend

    env = simpy.Environment()
    eng = SimBackend(
        env, 0, 4096, LatencyModel(FLAT_SEQ), block_size=16, max_batched_tokens=512, check=True
    )
    done: dict[str, object] = {}
    for pid in ("a", "b"):
        req = Request(pid, 0, 300, 4, None, 0, 0.0, 0)
        eng.submit(req, lambda u, pid=pid: done.setdefault(pid, u))
    env.run(until=10)
    step = lambda tokens, seqs: 1e-3 + 1e-6 * tokens + 50e-6 * seqs  # noqa: E731
    t1 = step(512, 2)
    t2 = t1 + step(89, 2)
    assert math.isclose(done["a"].first_token_time, t1, rel_tol=1e-12)
    assert math.isclose(done["b"].first_token_time, t2, rel_tol=1e-12)
    # a: 3 more tokens after t1 (iterations 2, 3, 4); b: 3 more after t2 (iterations 3-5),
    # the last one alone
    t4 = t2 + 2 * step(2, 2)
    assert math.isclose(done["a"].finish_time, t4, rel_tol=1e-12)
    assert math.isclose(done["b"].finish_time, t4 + step(1, 1), rel_tol=1e-12)


def _legacy_iteration_time(self, tokens, pairs, kv_read, seqs=0):
    """LatencyModel.iteration_time as it was before the per-sequence term (verbatim)."""
    p = self.profile
    compute = p.c_token * tokens + p.c_pair * pairs
    memory = p.m_const + p.m_expert * self.experts_touched(tokens) + p.m_kv * kv_read
    return p.overhead_s + (max(memory, compute))


def _legacy_decode_run_time(self, n, ctx0, k):
    """LatencyModel.decode_run_time as it was before the per-sequence term (verbatim)."""
    from thundersim.sim.latency import _series

    if k <= 0:
        return 0.0
    ac, bc, am, bm = self._decode_lines(n, ctx0)
    total = self.profile.overhead_s * k
    da, db = ac - am, bc - bm
    if db == 0:
        line = (ac, bc) if da >= 0 else (am, bm)
        return total + _series(*line, 0, k)
    jstar = -da / db
    if db > 0:
        c = min(max(math.ceil(jstar), 0), k)
        return total + _series(am, bm, 0, c) + _series(ac, bc, c, k)
    c = min(max(math.floor(jstar) + 1, 0), k)
    return total + _series(ac, bc, 0, c) + _series(am, bm, c, k)


def _run(specs, profile=None, skip_ahead=True):
    from thundersim.core.policy import PolicyOptions
    from thundersim.policies import make_policy
    from thundersim.sim.simulate import RunConfig, simulate

    config = RunConfig(
        setup=make_setup(kv_capacity_override=2500),
        concurrency=8,
        block_size=16,
        sample_dt=0.5,
        latency_profile=profile,
        skip_ahead=skip_ahead,
        check_invariants=True,
    )
    pol = make_policy("vllm", PolicyOptions(tick_interval=5.0, decay="pow:2"))
    return simulate(specs, pol, config, trace_name="test")


def _same_run(a, b) -> None:
    """Bit for bit: the summaries' JSON (less the run's wall-clock time and the speed from it,
    and the record of how the step-time model was chosen) and every table."""
    wall = ("wall_s", "sim_speed", "step_time")

    def simulated(summary):
        return json.dumps({k: v for k, v in summary.items() if k not in wall}, sort_keys=True)

    assert simulated(a.summary) == simulated(b.summary)
    for name in ("steps", "programs", "memory"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.equals(y), name


@pytest.mark.parametrize("skip_ahead", [True, False], ids=["skip-ahead", "reference"])
def test_c_seq_zero_is_bit_identical_to_the_model_without_it(small_trace, monkeypatch, skip_ahead):
    """With c_seq = 0 every simulated result is what it was before the term existed: a run with
    the roofline profile, the same run with c_seq set to 0 explicitly, and the same run on the
    old iteration and decode-run formulas (patched in verbatim) agree to the bit, under memory
    pressure (preemptions), with skip-ahead and in reference mode."""
    setup = make_setup(kv_capacity_override=2500)
    explicit = replace(roofline_profile(setup), c_seq=0.0)
    new = _run(small_trace, skip_ahead=skip_ahead)
    assert new.summary["preemptions"] > 0
    _same_run(new, _run(small_trace, explicit, skip_ahead=skip_ahead))
    monkeypatch.setattr(LatencyModel, "iteration_time", _legacy_iteration_time)
    monkeypatch.setattr(LatencyModel, "decode_run_time", _legacy_decode_run_time)
    _same_run(new, _run(small_trace, skip_ahead=skip_ahead))


def test_skip_ahead_reproduces_the_reference_with_a_per_sequence_cost(small_trace):
    """The closed-form decode runs carry c_seq * n per iteration exactly as the per-iteration
    path charges each iteration's requests: same steps, same hits and preemptions, and a
    per-sequence cost that really moves the clock."""
    setup = make_setup(kv_capacity_override=2500)
    prof = replace(roofline_profile(setup), c_seq=SEQ_COST_S)
    fast = _run(small_trace, prof)
    slow = _run(small_trace, prof, skip_ahead=False)
    assert fast.summary["preemptions"] == slow.summary["preemptions"] > 0
    assert fast.summary["engine_iterations"] == slow.summary["engine_iterations"]
    a = fast.steps.sort_values(["program", "step"]).reset_index(drop=True)
    b = slow.steps.sort_values(["program", "step"]).reset_index(drop=True)
    assert (a.cached_tokens == b.cached_tokens).all()
    assert (a.done_t - b.done_t).abs().max() < 1e-6
    # the clock moved: decoding took longer (throughput need not fall: the tools dominate and
    # the schedule shifts)
    plain = _run(small_trace).summary
    decode_s = fast.summary["step_breakdown_mean_s"]["decode_s"]
    assert decode_s > plain["step_breakdown_mean_s"]["decode_s"]


def test_the_roofline_is_a_step_time_model_named_roofline_and_a_calibrated_profile_calibrated():
    """Both kinds of LatencyModel satisfy the engine's StepTimeModel protocol and say which
    they are: a roofline profile is the roofline (the fallback), a measured one calibrated."""
    import dataclasses

    from thundersim.sim.latency import StepTimeModel

    roofline = LatencyModel(roofline_profile(make_setup()))
    assert isinstance(roofline, StepTimeModel)
    assert roofline.backend == "roofline" and roofline.source.startswith("roofline(GLM-4.6")
    calibrated = LatencyModel(
        dataclasses.replace(roofline_profile(make_setup()), source="calibrated against x")
    )
    assert calibrated.backend == "calibrated" and calibrated.source == "calibrated against x"
