"""The measured step-time backend (thundersim.sim.latency_measured): its tables agree with the
aiconfigurator-core estimator they tabulate, its decode runs are exact sums of its steps, and a
run's step-time model is chosen in the documented order with the roofline as the fallback."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thundersim.sim import latency_measured as lm
from thundersim.sim.catalog import make_setup
from thundersim.sim.latency import LatencyModel, StepTimeModel, roofline_profile

pytest.importorskip("aiconfigurator_core")

# Interpolation bounds this backend promises (module docstring): < 1 % of a step's time.
DECODE_BOUND = 0.01
MIXED_BOUND = 0.01


@pytest.fixture(scope="module")
def llama():
    """Llama-3.1-70B, FP8 weights and KV, TP2 on H100: a dense setup with silicon rows."""
    return lm.measured_step_time(make_setup("H100-SXM", "Llama-3.1-70B", tp=2))


@pytest.fixture(scope="module")
def qwen_moe():
    """Qwen3-235B-A22B FP8 TP4 on H200: an MoE setup."""
    return lm.measured_step_time(make_setup("H200", "Qwen3-235B-A22B", tp=4))


def _decode_reference(model, n: int, context: int) -> float:
    """The estimator's own pure-decode step: decode_step_latency evaluates the generation ops
    at s = isl + osl // 2 + 1, so isl = context - 1, osl = 1 puts them at `context` (>= 2: it
    refuses an empty prompt, isl = 0)."""
    return model._h.decode_step_latency(n, context - 1, 1) * 1e-3


def _ops(model, context: bool, names: str, batch: int, s: int, prefix: int = 0) -> float:
    """Seconds of the named op group, straight from the estimator at the exact point."""
    ops = {
        "ctx_rest": model._ctx_rest,
        "ctx_attn": model._ctx_attn,
        "gen_attn": model._gen_attn,
    }[names]
    if context:
        found = model._h.evaluate_context_ops(ops, batch_size=batch, s=s, prefix=prefix)
    else:
        found = model._h.evaluate_generation_ops(ops, batch_size=batch, s=s)
    return sum(op[1] for op in found) * 1e-3


def test_both_backends_satisfy_the_step_time_protocol(llama):
    """The engine's contract is the StepTimeModel protocol; the roofline and the measured
    backend both satisfy it and name what they are."""
    roofline = LatencyModel(roofline_profile(make_setup()))
    assert isinstance(roofline, StepTimeModel) and isinstance(llama, StepTimeModel)
    assert roofline.backend == "roofline" and llama.backend == "measured"
    assert "aiconfigurator-core 0.12.0" in llama.source and "TP2" in llama.source


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 512), context=st.integers(2, 131072))
def test_decode_step_is_the_estimators_within_the_interpolation_bound(llama, n, context):
    """A pure-decode step (tokens == seqs, pairs == KV read) at any batch and mean context,
    on the grid or between its points, is the estimator's decode_step_latency within 1 %."""
    got = llama.iteration_time(n, n * context, n * context, n)
    assert got == pytest.approx(_decode_reference(llama, n, context), rel=DECODE_BOUND)


def test_decode_step_on_a_grid_point_is_the_estimator_exactly(llama):
    """At a grid context the table holds the estimator's own value (only float rounding)."""
    for n, context in [(1, 2), (8, 16), (32, llama.grid[40]), (100, llama.grid[80])]:
        got = llama.iteration_time(n, n * context, n * context, n)
        assert got == pytest.approx(_decode_reference(llama, n, context), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    decodes=st.integers(1, 200),
    decode_context=st.integers(1, 60000),
    m=st.integers(2, 8000),
    cached=st.integers(0, 60000),
)
def test_mixed_step_is_the_estimators_ops_within_the_snapping_bound(
    llama, decodes, decode_context, m, cached
):
    """A step of decoding sequences plus one prefill chunk is the estimator's ops evaluated
    at the exact point: non-attention at the step's tokens, decode attention at the decodes'
    mean context, prefill attention of m tokens after `cached` ones, within 1 %."""
    tokens = decodes + m
    kv_read = decodes * decode_context + cached
    pairs = decodes * decode_context + m * cached + m * (m + 1) / 2
    got = llama.iteration_time(tokens, pairs, kv_read, decodes + 1)
    expected = (
        _ops(llama, True, "ctx_rest", 1, tokens)
        + _ops(llama, False, "gen_attn", decodes, decode_context)
        + _ops(llama, True, "ctx_attn", 1, m, cached)
    )
    assert got == pytest.approx(expected, rel=MIXED_BOUND)


def test_a_prefill_alone_is_the_estimators_prefill(llama):
    """One 4096-token prompt and nothing else: the estimator's predict_prefill_latency."""
    got = llama.iteration_time(4096, 4096 * 4097 / 2, 0.0, 1)
    assert got == pytest.approx(llama._h.predict_prefill_latency(1, 4096, 0) * 1e-3, rel=1e-3)


def test_a_burst_of_fresh_prompts_attends_as_separate_prompts_not_one_long_one(llama):
    """Eight fresh 1024-token prompts in one step: attention of eight 1024-token prompts
    (a batch of 8), far below one 8192-token prompt's quadratic attention."""
    burst = llama.iteration_time(8192, 8 * 1024 * 1025 / 2, 0.0, 8)
    expected = _ops(llama, True, "ctx_rest", 1, 8192) + _ops(llama, True, "ctx_attn", 8, 1024)
    assert burst == pytest.approx(expected, rel=MIXED_BOUND)
    one_long = llama.iteration_time(8192, 8192 * 8193 / 2, 0.0, 1)
    assert burst < one_long


def test_moe_decode_grows_with_batch_as_more_experts_are_read(qwen_moe):
    """An MoE decode step costs more at a larger batch (more experts touched, more tokens),
    and matches the estimator there too."""
    times = [qwen_moe.iteration_time(n, n * 2000, n * 2000, n) for n in (1, 8, 64)]
    assert times == sorted(times) and times[0] < times[-1]
    for n, t in zip((1, 8, 64), times, strict=True):
        assert t == pytest.approx(_decode_reference(qwen_moe, n, 2000), rel=DECODE_BOUND)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    mean=st.integers(1, 50000),
    extra=st.integers(0, 299),
    k=st.integers(0, 400),
)
def test_decode_run_time_is_the_sum_of_its_iterations(llama, n, mean, extra, k):
    """k decode iterations in closed form equal the k per-iteration times summed one by one
    (each context + 1 per iteration), across grid segments: the skip-ahead stays exact."""
    ctx0 = n * mean + extra % n
    stepwise = math.fsum(llama.iteration_time(n, ctx0 + j * n, ctx0 + j * n, n) for j in range(k))
    assert llama.decode_run_time(n, ctx0, k) == pytest.approx(stepwise, rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 200),
    mean=st.integers(1, 30000),
    k_max=st.integers(0, 500),
    frac=st.floats(0.0, 1.2),
)
def test_decode_iters_done_by_inverts_decode_run_time(llama, n, mean, k_max, frac):
    """The iterations done by `elapsed` are the smallest k <= k_max whose run has taken at
    least that long (k_max when even the whole run is shorter)."""
    ctx0 = n * mean
    elapsed = frac * llama.decode_run_time(n, ctx0, k_max)
    k = llama.decode_iters_done_by(n, ctx0, elapsed, k_max)
    assert 0 <= k <= k_max
    if k < k_max:
        assert llama.decode_run_time(n, ctx0, k) >= elapsed
    if k > 0:
        assert llama.decode_run_time(n, ctx0, k - 1) < elapsed


def test_decode_run_time_grows_with_iterations_and_context(llama):
    """More iterations or longer contexts never take less time."""
    runs = [llama.decode_run_time(16, 16 * 1000, k) for k in (0, 1, 10, 100, 1000)]
    assert runs[0] == 0.0 and runs == sorted(runs)
    assert llama.decode_run_time(16, 16 * 50000, 10) > llama.decode_run_time(16, 16 * 1000, 10)


# ---- fallback and selection ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({}, "does not model GLM-4.6"),  # the default setup: no vLLM table for its experts
        ({"gpu": "RTX-5090", "model": "Llama-3.1-8B", "tp": 1}, "no measured tables for RTX-5090"),
        ({"model": "Llama-3.1-8B", "tp": 1, "weight_dtype": "int8"}, "int8 weights"),
        ({"model": "Llama-3.1-8B", "tp": 1, "kv_dtype": "fp16"}, "fp16 KV"),
        ({"gpu": "H200", "model": "gpt-oss-120b", "tp": 2, "weight_dtype": "fp8"}, "mxfp4 only"),
        # Ampere has no FP8 compute in the package's A100 system (nor on the chip)
        ({"gpu": "A100-80G", "model": "Llama-3.1-70B"}, "fp8"),
        # block-FP8 experts of 1536 / TP8 = 192 columns do not split into 128-wide blocks
        # (vLLM refuses the same layout)
        ({"model": "Qwen3-235B-A22B"}, "weight_block_size"),
    ],
)
def test_a_setup_the_package_cannot_model_falls_back_to_the_roofline_and_says_why(kwargs, why):
    """auto and an explicit `measured` both fall back to the roofline for a setup the package
    cannot model; the choice is named roofline and its reason says fallback and why."""
    setup = make_setup(**kwargs)
    for choice in ("auto", "measured"):
        picked = lm.select_step_time(setup, choice=choice)
        assert picked.backend == "roofline"
        assert isinstance(picked.model, LatencyModel)
        assert picked.reason.startswith("fallback:") and why in picked.reason
        assert picked.source == roofline_profile(setup).source


def test_without_the_package_every_setup_falls_back_to_the_roofline(monkeypatch):
    """aiconfigurator-core not importable: the roofline, and the reason says so."""
    import builtins

    real_import = builtins.__import__

    def no_aic(name, *args, **kwargs):
        if name.startswith("aiconfigurator_core"):
            raise ImportError("No module named 'aiconfigurator_core'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_aic)
    monkeypatch.setattr(lm, "_MEASURED", {})
    picked = lm.select_step_time(make_setup("H100-SXM", "Llama-3.1-8B", tp=1))
    assert picked.backend == "roofline" and "not importable" in picked.reason


def test_selection_precedence_profile_then_explicit_then_default(monkeypatch):
    """A calibrated profile wins over any --step-time; an explicit choice wins over the
    per-setup default; auto takes the default (DEFAULT_BACKEND, else measured)."""
    setup = make_setup("H100-SXM", "Llama-3.1-70B", tp=2)
    calibrated = dataclasses.replace(
        roofline_profile(setup), source="calibrated against http://x at t"
    )
    for choice in lm.STEP_TIME_CHOICES:
        picked = lm.select_step_time(setup, calibrated, choice)
        assert picked.backend == "calibrated" and picked.model.profile is calibrated
    assert lm.select_step_time(setup, choice="roofline").backend == "roofline"
    assert lm.select_step_time(setup, choice="measured").backend == "measured"
    assert lm.select_step_time(setup, choice="auto").backend == "measured"
    monkeypatch.setitem(
        lm.DEFAULT_BACKEND, ("Llama-3.1-70B", "H100-SXM"), ("roofline", "a test decision")
    )
    auto = lm.select_step_time(setup, choice="auto")
    assert auto.backend == "roofline" and "a test decision" in auto.reason
    assert lm.select_step_time(setup, choice="measured").backend == "measured"


def test_an_unknown_step_time_choice_is_refused_with_the_valid_ones():
    """A typo in --step-time lists the valid backends."""
    from thundersim.sim.simulate import RunConfig

    with pytest.raises(ValueError, match="auto, measured, roofline"):
        lm.select_step_time(make_setup(), choice="fast")
    with pytest.raises(ValueError, match="auto, measured, roofline"):
        RunConfig(step_time="fast")


def test_a_run_records_which_step_time_backend_it_used():
    """The summary's step_time names the backend, its source and why it was chosen; the same
    trace on the measured and the roofline backend gives different timings."""
    from thundersim.core.policy import PolicyOptions
    from thundersim.policies import make_policy
    from thundersim.sim.simulate import RunConfig, simulate
    from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

    specs = [
        ProgramSpec(f"p{i}", "t", 0.0, None, 0, EnvSpec(), (StepSpec(512, 64, "", 0.0),))
        for i in range(4)
    ]
    setup = make_setup("H100-SXM", "Llama-3.1-8B", tp=1)
    summaries = {}
    for choice in ("measured", "roofline"):
        config = RunConfig(setup=setup, concurrency=4, step_time=choice, tool_manager=None)
        pol = make_policy("vllm", PolicyOptions(tick_interval=5.0, decay="pow:2"))
        summaries[choice] = simulate(specs, pol, config).summary
    assert summaries["measured"]["step_time"]["backend"] == "measured"
    assert "aiconfigurator-core" in summaries["measured"]["step_time"]["source"]
    assert summaries["roofline"]["step_time"]["backend"] == "roofline"
    assert summaries["measured"]["steps_completed"] == summaries["roofline"]["steps_completed"] == 4
    assert summaries["measured"]["simulated_s"] != summaries["roofline"]["simulated_s"]
