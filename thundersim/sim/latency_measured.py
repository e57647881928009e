"""Step time from measured GPU operator data: aiconfigurator-core's vLLM tables, tabulated.

aiconfigurator-core (NVIDIA, Apache-2.0, PyPI) ships operator latencies measured on real GPUs
for vLLM (GEMMs, attention, MoE, all-reduce, per system and vLLM version) and a compiled
estimator (`AicEngine`) that composes them into the time of one forward pass. Those operator
tables are this backend's calibration data; nothing here is fitted to end-to-end results.

One engine step of n_d decoding sequences plus a prefill chunk is composed as the estimator
composes a mixed step (its `mixed_step_latency` three passes), from the same ops:

    t = G(tokens)                       every non-attention op (GEMMs, MoE, norms, all-reduce)
                                        at the step's token count (the context op list);
      + A_dec(n_d, mean decode context) decode attention of the decoding sequences;
      + A_ctx(chunk)                    prefill attention of the chunk's (query, key) pairs.

A pure-decode step is the estimator's `decode_step_latency` exactly: the generation op list at
batch n, i.e. G_dec(n) + A_dec(n, s) with s the mean context.

Tabulation (every value is computed once, lazily, and cached; a setup's tables live as long as
the process, shared by every run of that setup):
- G(x) and G_dec(n) at every integer token count / batch size: exact.
- A_dec(n, s) at every integer n on a grid of contexts s (every integer up to 16, then
  geometric, 8 points per octave), linear in s between grid points. Summed over a run of
  decode iterations (each context + 1 per step) in closed form per grid segment, so
  `decode_run_time` is exactly the sum of the per-iteration times and the engine's skip-ahead
  stays exact. The interpolation error against the estimator is measured by the tests
  (tests/test_latency_measured.py): under 1 % of a decode step's time.
- A_ctx at the chunk's (batch, tokens, prefix) snapped to a 32-per-octave grid (≤ 1.1 % off in
  each), nearest point: under 1 % of a mixed step's time, likewise tested.

What the engine tells a step is (tokens, attention pairs, KV read, sequences), not how they
split into decodes and chunks. A mixed step is read as seqs - 1 decoding sequences plus one
prefill chunk holding every other token, its cached prefix solved from pairs and KV read (exact
for one chunk, the common case). When the pairs are fewer than one chunk of that size could
have (several fresh prompts admitted in one step), the chunk's attention is that of equal fresh
prompts with the same total pairs; when the KV read is less than that many decodes would read,
every sequence is read as an equal prompt chunk (a burst of new prompts).

No per-step host overhead is added: the estimator's step is the whole step (vLLM's V1 engine
overlaps its CPU work with the GPU).

Setups the package cannot model (a GPU or model it has no tables for, a dtype it does not
serve, a missing operator table) raise `Unmodelled`; `select_step_time` then falls back to the
roofline (thundersim.sim.latency) and says so in the run's summary.
"""

from __future__ import annotations

import contextlib
import logging
import math
from bisect import bisect_right
from dataclasses import dataclass

from thundersim.sim.catalog import Setup
from thundersim.sim.latency import (
    LatencyModel,
    LatencyProfile,
    StepTimeModel,
    iters_done_by,
    roofline_profile,
)

STEP_TIME_CHOICES = ("auto", "measured", "roofline")

# provenance: spec — the package and version this backend is written and validated against
AIC_PACKAGE, AIC_VERSION = "aiconfigurator-core", "0.12.0"
# provenance: spec — aiconfigurator-core's system names for the catalog's GPUs (its systems/*.yaml)
AIC_SYSTEMS = {"H100-SXM": "h100_sxm", "H200": "h200_sxm", "A100-80G": "a100_sxm"}
# Catalog model -> the Hugging Face id whose config.json aiconfigurator-core bundles (its
# model_configs/; nothing is fetched from a hub). Qwen3-Coder-30B-A3B-Instruct is not bundled;
# Qwen3-30B-A3B has the same architecture (48 layers, hidden 2048, 32 heads, 4 KV heads, 128
# experts, top-8, moe_intermediate 768; only the context window differs), so its ops are the
# Coder's. GLM-4.6 is not here: its architecture (Glm4MoeForCausalLM) is not one the package
# models and it has no vLLM MoE table for GLM's expert shape (160 x 5120 x 1536), so it runs on
# the roofline.
# provenance: spec — aiconfigurator-core 0.12.0 model_configs/ (copies of each config.json)
AIC_MODELS = {
    "Llama-3.1-8B": "meta-llama/Meta-Llama-3.1-8B",
    "Llama-3.1-70B": "meta-llama/Meta-Llama-3.1-70B",
    "Qwen3-8B": "Qwen/Qwen3-8B",
    "Qwen3-32B": "Qwen/Qwen3-32B",
    "Qwen3-235B-A22B": "Qwen/Qwen3-235B-A22B",
    "Qwen3-Coder-30B-A3B-Instruct": "Qwen/Qwen3-30B-A3B",
    "gpt-oss-120b": "openai/gpt-oss-120b",
}
# FP8 weights of these models are their vendor's published FP8 checkpoint, block-wise FP8
# (config.json quantization_config: fp8, weight_block_size [128, 128]), served as such by vLLM;
# the package bundles their configs and infers the quant modes (fp8_block) from them. Other
# models' FP8 (Meta publishes no FP8 Llama-3.1-8B/70B, Qwen3-8B-FP8 is not bundled) is vLLM's
# per-tensor FP8 of the BF16 checkpoint (`--quantization fp8`).
# provenance: spec — Qwen/Qwen3-32B-FP8, Qwen3-235B-A22B-FP8, Qwen3-30B-A3B-FP8 config.json
AIC_FP8_CHECKPOINTS = {
    "Qwen3-32B": "Qwen/Qwen3-32B-FP8",
    "Qwen3-235B-A22B": "Qwen/Qwen3-235B-A22B-FP8",
    "Qwen3-Coder-30B-A3B-Instruct": "Qwen/Qwen3-30B-A3B-FP8",
}
# Catalog dtype -> aiconfigurator quant mode (common.GEMMQuantMode / KVCacheQuantMode names).
# provenance: spec — aiconfigurator-core 0.12.0 sdk/common.py quant-mode enums
AIC_QUANT = {"fp8": "fp8", "bf16": "bfloat16"}
# provenance: definition — a model's own checkpoint format: quant modes inferred from its config
NATIVE_DTYPE = {"gpt-oss-120b": "mxfp4"}

# Context grid of the decode-attention table: every integer up to 16, then 8 points per octave.
# provenance: estimate — dense enough that linear interpolation stays under 1 % of a step (tested)
_DENSE_UPTO, _PER_OCTAVE = 16, 8
# Snapping grid of the prefill-attention lookups: 32 points per octave (≤ 1.1 % per parameter).
# provenance: estimate — fine enough that nearest-point lookup stays under 1 % of a step (tested)
_SNAP_EXACT_UPTO, _SNAP_PER_OCTAVE = 64, 32
_MS = 1e-3  # provenance: definition — the estimator answers in milliseconds


class Unmodelled(Exception):
    """aiconfigurator-core cannot model this setup (the reason is the message)."""


def _context_grid(max_context: int) -> list[int]:
    grid = list(range(1, _DENSE_UPTO + 1))
    k = round(math.log2(_DENSE_UPTO) * _PER_OCTAVE) + 1
    while grid[-1] < max_context:
        v = round(2 ** (k / _PER_OCTAVE))
        if v > grid[-1]:
            grid.append(v)
        k += 1
    return grid


def _snap(v: float) -> int:
    """The grid point nearest v: v itself (rounded) up to 64, then 32 points per octave."""
    if v <= _SNAP_EXACT_UPTO:
        return max(0, round(v))
    return round(2 ** (round(math.log2(v) * _SNAP_PER_OCTAVE) / _SNAP_PER_OCTAVE))


@contextlib.contextmanager
def _quiet():
    """aiconfigurator-core logs every table it loads (and low-fidelity fallbacks it will not
    use for these ops) as warnings; keep them off a run's terminal."""
    log = logging.getLogger("aiconfigurator_core")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def engine_key(setup: Setup) -> tuple:
    """What identifies a compiled estimator: system, model, TP, quant modes. Raises Unmodelled
    for a setup the package has no tables or model for."""
    system = AIC_SYSTEMS.get(setup.gpu.name)
    if system is None:
        raise Unmodelled(f"{AIC_PACKAGE} has no measured tables for {setup.gpu.name}")
    model_path = AIC_MODELS.get(setup.model.name)
    if model_path is None:
        raise Unmodelled(f"{AIC_PACKAGE} does not model {setup.model.name}")
    native = NATIVE_DTYPE.get(setup.model.name)
    if native is not None:
        if setup.weight_dtype != native:
            raise Unmodelled(
                f"{setup.model.name} is modelled in its checkpoint's {native} only, "
                f"not {setup.weight_dtype}"
            )
        gemm = moe = None  # inferred from the bundled config's quantization_config
    elif setup.weight_dtype == "fp8" and setup.model.name in AIC_FP8_CHECKPOINTS:
        model_path = AIC_FP8_CHECKPOINTS[setup.model.name]
        gemm = moe = None  # block-wise FP8, inferred from the checkpoint's config
    elif setup.weight_dtype in AIC_QUANT:
        gemm = moe = AIC_QUANT[setup.weight_dtype]
    else:
        raise Unmodelled(f"{AIC_PACKAGE} has no vLLM tables for {setup.weight_dtype} weights")
    kv = AIC_QUANT.get(setup.kv_dtype)
    if kv is None:
        raise Unmodelled(f"{AIC_PACKAGE} has no vLLM tables for a {setup.kv_dtype} KV cache")
    return system, model_path, setup.tp, gemm, moe if setup.model.is_moe else None, kv


def _compile(key: tuple):
    try:
        from aiconfigurator_core.sdk.engine import EngineHandle
        from aiconfigurator_core.sdk.utils import DefaultHFModels
    except ImportError as exc:
        raise Unmodelled(f"{AIC_PACKAGE} is not importable: {exc}") from exc
    system, model_path, tp, gemm, moe, kv = key
    if model_path not in DefaultHFModels:  # never let it reach for a hub
        raise Unmodelled(f"{AIC_PACKAGE} does not bundle the config of {model_path}")
    kwargs = {"tp_size": tp, "moe_tp_size": tp, "moe_ep_size": 1, "kvcache_quant_mode": kv}
    if gemm is not None:
        kwargs["gemm_quant_mode"] = gemm
    if moe is not None:
        kwargs["moe_quant_mode"] = moe
    try:
        with _quiet():
            return EngineHandle.compile(model_path, system, "vllm", **kwargs)
    except Exception as exc:  # the package's own errors: no table, unsupported combination
        raise Unmodelled(f"{AIC_PACKAGE} cannot build {model_path} on {system}: {exc}") from exc


class MeasuredStepTime:
    """Step times of one setup from aiconfigurator-core's compiled estimator, tabulated lazily
    (see the module docstring). Satisfies thundersim.sim.latency.StepTimeModel."""

    backend = "measured"

    def __init__(self, handle, max_context: int, source: str):
        self._h = handle
        # context ops: the one named context_attention, every other one
        ctx, gen = handle.run_static_per_op(batch_size=1, isl=16, osl=2)
        self._ctx_attn = [i for i, op in enumerate(ctx) if op[0] == "context_attention"]
        self._ctx_rest = [i for i, op in enumerate(ctx) if op[0] != "context_attention"]
        self._gen_attn = [i for i, op in enumerate(gen) if op[0] == "generation_attention"]
        self._gen_rest = [i for i, op in enumerate(gen) if op[0] != "generation_attention"]
        if len(self._ctx_attn) != 1 or len(self._gen_attn) != 1:
            raise Unmodelled(f"{source}: no single attention op to tabulate apart")
        self.source = source
        self.grid = _context_grid(max(max_context, 2 * _DENSE_UPTO))
        self._g_ctx: dict[int, float] = {}
        self._g_dec: dict[int, float] = {}
        self._a_dec: dict[int, list[float | None]] = {}
        self._a_ctx: dict[tuple[int, int, int], float] = {}

    # ---- the estimator, one op group at a time (seconds) ------------------------------------
    def _ops(self, context: bool, ops: list[int], batch: int, s: int, prefix: int = 0) -> float:
        with _quiet():
            if context:
                found = self._h.evaluate_context_ops(ops, batch_size=batch, s=s, prefix=prefix)
            else:
                found = self._h.evaluate_generation_ops(ops, batch_size=batch, s=s)
        return sum(op[1] for op in found) * _MS

    def g_ctx(self, tokens: int) -> float:
        """Every non-attention op of a step running `tokens` tokens (context op list)."""
        hit = self._g_ctx.get(tokens)
        if hit is None:
            hit = self._g_ctx[tokens] = self._ops(True, self._ctx_rest, 1, tokens)
        return hit

    def g_dec(self, n: int) -> float:
        """Every non-attention op of a pure-decode step of n sequences (generation op list)."""
        hit = self._g_dec.get(n)
        if hit is None:
            hit = self._g_dec[n] = self._ops(False, self._gen_rest, n, 1)
        return hit

    def _a_dec_node(self, n: int, i: int) -> float:
        nodes = self._a_dec.get(n)
        if nodes is None:
            nodes = self._a_dec[n] = [None] * len(self.grid)
        v = nodes[i]
        if v is None:
            v = nodes[i] = self._ops(False, self._gen_attn, n, self.grid[i])
        return v

    def _segment(self, s: float) -> int:
        return min(max(bisect_right(self.grid, s) - 1, 0), len(self.grid) - 2)

    def _line(self, n: int, i: int) -> tuple[float, float]:
        """Decode attention on grid segment i as a + b*s."""
        x0, x1 = self.grid[i], self.grid[i + 1]
        y0, y1 = self._a_dec_node(n, i), self._a_dec_node(n, i + 1)
        b = (y1 - y0) / (x1 - x0)
        return y0 - b * x0, b

    def a_dec(self, n: int, s: float) -> float:
        """Decode attention of n sequences of mean context s (linear between grid points)."""
        a, b = self._line(n, self._segment(s))
        return a + b * s

    def a_ctx(self, batch: int, tokens: int, prefix: int) -> float:
        """Prefill attention of `batch` chunks of `tokens` new tokens after `prefix` cached
        ones, at the nearest snapping-grid point."""
        key = (batch, max(1, _snap(tokens)), _snap(prefix))
        hit = self._a_ctx.get(key)
        if hit is None:
            hit = self._a_ctx[key] = self._ops(True, self._ctx_attn, *key)
        return hit

    # ---- StepTimeModel -----------------------------------------------------------------------
    def iteration_time(self, tokens: int, pairs: float, kv_read: float, seqs: int) -> float:
        if tokens == seqs and pairs == kv_read:  # every sequence decodes one token
            return self.g_dec(seqs) + self.a_dec(seqs, kv_read / seqs)
        decodes = seqs - 1
        m = tokens - decodes  # the chunk's tokens
        if decodes == 0:
            cached = kv_read
        elif m <= 1:  # one-token chunks only: their prefixes cannot be told from the decodes'
            cached = kv_read / seqs
        else:
            extra = pairs - kv_read  # = (m - 1) * cached + m (m + 1) / 2 for one chunk
            cached = min(max((extra - m * (m + 1) / 2) / (m - 1), 0.0), kv_read)
        decode_ctx = kv_read - cached
        if decodes and decode_ctx < decodes:
            # less KV than that many decoding sequences would read (each holds >= 1 token):
            # every sequence is a prompt chunk; read them as equal ones
            return self.g_ctx(tokens) + self.a_ctx(
                seqs, max(1, round(tokens / seqs)), round(kv_read / seqs)
            )
        t = self.g_ctx(tokens)
        if decodes:
            t += self.a_dec(decodes, decode_ctx / decodes)
        chunk_pairs = pairs - decode_ctx
        own = m * (m + 1) / 2
        if cached > 0 or chunk_pairs >= own:
            t += self.a_ctx(1, m, round(cached))
        else:  # fewer pairs than one chunk of m tokens: several fresh prompts of equal length
            each = max(2 * chunk_pairs / m - 1, 1.0)
            batch = max(1, round(m / each))
            t += self.a_ctx(batch, max(1, round(m / batch)), 0)
        return t

    def decode_run_time(self, n: int, ctx0: int, k: int) -> float:
        """Exact total of k pure-decode iterations of n sequences (context sum ctx0 at the
        first): k * G_dec(n) + the sum of the interpolated attention over the contexts
        s0, s0 + 1, ... (s0 = ctx0 / n), summed per grid segment as arithmetic series."""
        if k <= 0:
            return 0.0
        s0 = ctx0 / n
        grid, last = self.grid, len(self.grid) - 2
        total = k * self.g_dec(n)
        i = self._segment(s0)
        j = 0
        while j < k:
            end = k if i >= last else min(k, max(j + 1, math.ceil(grid[i + 1] - s0)))
            a, b = self._line(n, i)
            count = end - j
            total += count * (a + b * s0) + b * (j + end - 1) * count / 2
            j = end
            i = min(i + 1, last)
        return total

    def decode_iters_done_by(self, n: int, ctx0: int, elapsed: float, k_max: int) -> int:
        """Smallest k <= k_max with decode_run_time(k) >= elapsed."""
        return iters_done_by(self, n, ctx0, elapsed, k_max)


_MEASURED: dict[tuple, MeasuredStepTime] = {}


def measured_step_time(setup: Setup) -> MeasuredStepTime:
    """The setup's measured backend (built once per process and shared: its tables only grow).
    Raises Unmodelled if aiconfigurator-core cannot model the setup."""
    key = engine_key(setup)
    hit = _MEASURED.get(key)
    if hit is None:
        system, model_path, tp, gemm, moe, kv = key
        quant = f"weights {gemm or 'as the checkpoint'}, KV {kv}"
        source = (
            f"{AIC_PACKAGE} {AIC_VERSION} measured vLLM op tables ({system}, {model_path}, "
            f"TP{tp}, {quant})"
        )
        handle = _compile(key)
        try:  # a table that is missing fails here, not in the middle of a run
            model = MeasuredStepTime(handle, setup.model.max_context, source)
            model.iteration_time(1, 1.0, 1.0, 1)
            model.iteration_time(64, 64 * 65 / 2, 0.0, 1)
        except Unmodelled:
            raise
        except Exception as exc:  # the package's own errors (no table, no FLOPs for a dtype)
            raise Unmodelled(f"{source}: {exc}") from exc
        hit = _MEASURED[key] = model
    return hit


# ---- the per-setup default, decided by experiments/bench_latency_silicon.py ------------------
# Validation, not calibration: the silicon rows (measured end-to-end TTFT/TPOT) are used for
# one decision only, which backend is a setup's default (the lower TPOT MAPE over the pair's
# rows, any TP and dtype; TTFT is dominated by the clients' synchronisation and the server's
# front end, which neither backend models); nothing is tuned to them. Keyed by (catalog model,
# GPU); a pair absent here defaults to the measured backend where the package can model it
# (and to the roofline where it cannot). Regenerate with the command quoted in each entry.
# provenance: measured — experiments/bench_latency_silicon.py against aiconfigurator-core 0.12.0
# systems/silicon_sample.csv (the MAPEs quoted in each entry)
DEFAULT_BACKEND: dict[tuple[str, str], tuple[str, str]] = {
    ("Llama-3.1-70B", "H100-SXM"): (
        "measured",
        "TPOT MAPE over 45 silicon rows: measured 8.0 %, roofline 17.0 % (TTFT 38 % / 60 %; python experiments/bench_latency_silicon.py)",
    ),
    ("Llama-3.1-70B", "H200"): (
        "measured",
        "TPOT MAPE over 60 silicon rows: measured 6.1 %, roofline 16.2 % (TTFT 80 % / 92 %; python experiments/bench_latency_silicon.py)",
    ),
    ("Llama-3.1-8B", "H200"): (
        "roofline",
        "TPOT MAPE over 21 silicon rows: measured 88.6 %, roofline 64.1 % (TTFT 72 % / 66 %; python experiments/bench_latency_silicon.py)",
    ),
    ("Qwen3-235B-A22B", "H200"): (
        "measured",
        "TPOT MAPE over 26 silicon rows: measured 23.7 %, roofline 55.9 % (TTFT 57 % / 83 %; python experiments/bench_latency_silicon.py)",
    ),
    ("Qwen3-32B", "H100-SXM"): (
        "roofline",
        "TPOT MAPE over 93 silicon rows: measured 22.6 %, roofline 17.4 % (TTFT 63 % / 66 %; python experiments/bench_latency_silicon.py)",
    ),
    ("gpt-oss-120b", "H100-SXM"): (
        "roofline",
        "TPOT MAPE over 69 silicon rows: measured 51.0 %, roofline 46.4 % (TTFT 68 % / 83 %; python experiments/bench_latency_silicon.py)",
    ),
    ("gpt-oss-120b", "H200"): (
        "measured",
        "TPOT MAPE over 75 silicon rows: measured 13.3 %, roofline 22.1 % (TTFT 66 % / 82 %; python experiments/bench_latency_silicon.py)",
    ),
}


@dataclass(frozen=True)
class StepTimeChoice:
    """The step-time model a run uses, which backend it is and why (recorded in the summary)."""

    model: StepTimeModel
    backend: str  # calibrated | measured | roofline
    source: str
    reason: str

    def record(self) -> dict:
        return {"backend": self.backend, "source": self.source, "reason": self.reason}


def _roofline(setup: Setup, reason: str) -> StepTimeChoice:
    profile = roofline_profile(setup)
    return StepTimeChoice(LatencyModel(profile), "roofline", profile.source, reason)


def select_step_time(
    setup: Setup, profile: LatencyProfile | None = None, choice: str = "auto"
) -> StepTimeChoice:
    """The step-time model of a run. Precedence: a calibrated profile the user gave, then an
    explicit choice (measured | roofline), then the setup's default (DEFAULT_BACKEND, else
    measured where aiconfigurator-core can model the setup). A measured backend that cannot be
    built falls back to the roofline, and the reason says so."""
    if choice not in STEP_TIME_CHOICES:
        raise ValueError(
            f"unknown step-time backend {choice!r}; valid: {', '.join(STEP_TIME_CHOICES)}"
        )
    if profile is not None:
        model = LatencyModel(profile)
        why = "a latency profile was given (it wins over --step-time)"
        return StepTimeChoice(model, model.backend, profile.source, why)
    if choice == "roofline":
        return _roofline(setup, "chosen explicitly (--step-time roofline)")
    reason = "chosen explicitly (--step-time measured)"
    if choice == "auto":
        default = DEFAULT_BACKEND.get((setup.model.name, setup.gpu.name))
        if default is not None and default[0] == "roofline":
            return _roofline(setup, f"per-setup default: {default[1]}")
        reason = f"per-setup default: {default[1]}" if default else "default where it applies"
    try:
        model = measured_step_time(setup)
    except Unmodelled as exc:
        return _roofline(setup, f"fallback: {exc}")
    return StepTimeChoice(model, "measured", model.source, reason)
