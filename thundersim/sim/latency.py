"""Iteration time of one engine step: a roofline of the batch, the fallback step-time backend.

Every step-time backend satisfies `StepTimeModel`. A setup's default is the measured one
(thundersim.sim.latency_measured: aiconfigurator-core's measured vLLM operator tables) where
that package can model it; this roofline is the fallback, and the model a calibrated profile
(`thundersim calibrate`) runs on.

One vLLM iteration runs every scheduled token through the model once. Its time is

    t = overhead + c_seq * seqs + max(compute_s, memory_s)

    compute_s = (2 * active_params * tokens + 4 * layers * q_dim * attention_pairs) / (flops * MFU)
    memory_s  = (weight bytes read + KV bytes read) / (bandwidth * MBU)

where `attention_pairs` counts (query, key) pairs: a decode token with context c attends to c
keys; a prefill chunk of m tokens after s cached ones attends to m*s + m(m+1)/2. For MoE models
the weight bytes read depend on how many routed experts the batch touches:
E * (1 - (1 - k/E)^tokens) in expectation, with uniform routing. `seqs` counts the sequences
scheduled in the iteration (decoding ones and prefill chunks): host-side work per sequence
(input preparation, sampling, output processing), which overlaps neither the compute nor
the memory term, so it adds outside their max. The roofline sets c_seq = 0 (its overhead
lumps a step's CPU work); a calibrated profile measures it.

Both terms are linear in the batch's context sum while the batch composition stays fixed, so a
run of k pure-decode iterations (every sequence grows by one token per step) has a closed-form
total time (the per-sequence term is the same in every iteration of it). The engine uses that
to skip over iterations in which nothing but decoding happens.

The efficiency constants below are named estimates, not fitted to any result; a calibrated
profile (`LatencyProfile`, measured against a live engine) replaces them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

from thundersim.sim.catalog import DTYPE_BYTES, Setup

# Model FLOPs utilisation of large FP8/BF16 GEMMs on Hopper: dense GEMMs reach 60-75% of peak in
# NVIDIA's published cuBLAS numbers; end-to-end prefill with attention and MoE dispatch is lower.
# 0.5 is an estimate, to be replaced by calibration.
# provenance: estimate — below cuBLAS's 60-75 % dense-GEMM peaks; calibrate replaces it
DEFAULT_MFU = 0.5
# Memory bandwidth utilisation of decode kernels: weight-streaming GEMV and paged attention reach
# roughly 80% of HBM peak in vLLM/FlashInfer kernel benchmarks. An estimate.
# provenance: estimate — decode kernels near 80 % of HBM peak; calibrate replaces it
DEFAULT_MBU = 0.8
# CPU-side cost per iteration (scheduling, input preparation, sampling, launch) in vLLM V1, a
# few milliseconds per step as its V1 design notes report. An estimate.
# provenance: estimate — vLLM V1's CPU-side cost per step (a few ms)
DEFAULT_STEP_OVERHEAD_S = 0.002
# Latency of one small NCCL all-reduce over NVLink (tens of microseconds); tensor parallelism
# does two per layer (after attention and after the MLP).
DEFAULT_ALLREDUCE_LATENCY_S = 10e-6  # provenance: estimate — a small NCCL all-reduce over NVLink
# Host-side cost per scheduled sequence in the roofline: none. The roofline's step overhead
# (DEFAULT_STEP_OVERHEAD_S) already lumps a step's CPU work whatever its batch, and on a GPU
# vLLM V1 prepares the next batch while the current one runs; 0 also keeps every roofline result
# as it was before the term existed. Calibration measures it on a live engine (on the CPU vLLM
# it is far from 0: sampling and input preparation run on the same cores as the model).
# provenance: estimate — no per-sequence host cost beyond the step overhead; calibrate measures it
ROOFLINE_SEQ_COST_S = 0.0


@runtime_checkable
class StepTimeModel(Protocol):
    """What the engine asks of a step-time backend: the roofline's `LatencyModel` (the
    fallback, or a calibrated profile) and the measured one (thundersim.sim.latency_measured)
    alike. Pure functions of the batch; `backend` names the kind, `source` where it comes from.
    """

    backend: str
    source: str

    def iteration_time(self, tokens: int, pairs: float, kv_read: float, seqs: int) -> float:
        """Seconds of one step of `seqs` sequences running `tokens` tokens that attend to
        `pairs` (q, k) pairs and read `kv_read` cached tokens' KV."""
        ...

    def decode_run_time(self, n: int, ctx0: int, k: int) -> float:
        """Exact total of k pure-decode steps of n sequences whose contexts sum to ctx0 at the
        first (each grows by one per step): the sum of their iteration_time."""
        ...

    def decode_iters_done_by(self, n: int, ctx0: int, elapsed: float, k_max: int) -> int:
        """Smallest k <= k_max with decode_run_time(n, ctx0, k) >= elapsed."""
        ...


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """Coefficients of the two linear forms of the roofline, plus a fixed overhead and a
    host-side cost per scheduled sequence (outside the max):

    t         = overhead_s + c_seq * seqs + max(compute_s, memory_s)
    compute_s = c_token * tokens + c_pair * attention_pairs
    memory_s  = m_const + m_expert * expected_experts_touched + m_kv * kv_tokens_read
    A calibrated profile from a live engine has the same shape, so the simulator treats both
    alike. Written/read as JSON (`save` / `load`).
    """

    overhead_s: float
    c_token: float  # seconds per batched token (dense/active GEMMs)
    c_pair: float  # seconds per attention (query, key) pair
    m_const: float  # seconds to stream the weights every iteration reads
    m_expert: float  # seconds to stream one routed expert (all layers)
    m_kv: float  # seconds to read one cached token's KV
    n_experts: int = 0  # provenance: definition — 0 = a dense model
    experts_per_token: int = 0  # provenance: definition — none for a dense model
    # seconds per sequence scheduled in an iteration (sampling, input preparation)
    c_seq: float = 0.0  # provenance: definition — 0 = no such term (older profiles load so)
    source: str = "roofline"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LatencyProfile:
        try:
            data = json.loads(Path(path).read_text())
            profile = cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a latency profile: {exc}") from exc
        for f in fields(cls):
            value = getattr(profile, f.name)
            if f.name == "source":
                if not isinstance(value, str):
                    raise ValueError(f"{path}: field source must be a string")
            elif (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"{path}: field {f.name} must be a finite number >= 0, got {value!r}"
                )
        if profile.overhead_s <= 0:
            raise ValueError(f"{path}: field overhead_s must be > 0 (a step is never free)")
        return profile


def roofline_profile(
    setup: Setup,
    mfu: float = DEFAULT_MFU,
    mbu: float = DEFAULT_MBU,
    step_overhead_s: float = DEFAULT_STEP_OVERHEAD_S,
    allreduce_latency_s: float = DEFAULT_ALLREDUCE_LATENCY_S,
) -> LatencyProfile:
    """Derive the profile of a setup from its hardware and model specs."""
    model = setup.model
    flops = setup.peak_flops * mfu
    bw = setup.bandwidth * mbu
    wbytes = DTYPE_BYTES[setup.weight_dtype]
    comm = 2 * model.n_layers * allreduce_latency_s if setup.tp > 1 else 0.0
    return LatencyProfile(
        overhead_s=step_overhead_s + comm,
        c_token=2 * model.active_params / flops,
        c_pair=4 * model.n_layers * model.n_heads * model.head_dim / flops,
        m_const=model.always_read_params * wbytes / bw,
        m_expert=model.expert_params * wbytes / bw,
        m_kv=setup.kv_bytes_per_token / bw,
        n_experts=model.n_experts,
        experts_per_token=model.experts_per_token,
        c_seq=ROOFLINE_SEQ_COST_S,
        source=f"roofline({setup.name}, mfu={mfu}, mbu={mbu})",
    )


class LatencyModel:
    """Iteration times from a `LatencyProfile`; pure functions of the batch, no state."""

    __slots__ = ("_experts_cache", "profile")

    def __init__(self, profile: LatencyProfile):
        self.profile = profile
        self._experts_cache: dict[int, float] = {}

    @property
    def backend(self) -> str:
        """roofline (the fallback of every setup), or calibrated (a profile measured against a
        live engine by `thundersim calibrate`)."""
        return "roofline" if self.profile.source.startswith("roofline") else "calibrated"

    @property
    def source(self) -> str:
        return self.profile.source

    def experts_touched(self, tokens: int) -> float:
        """Expected routed experts (per layer) that a batch of `tokens` activates."""
        p = self.profile
        if p.n_experts == 0 or tokens <= 0:
            return 0.0
        hit = self._experts_cache.get(tokens)
        if hit is None:
            hit = p.n_experts * (1.0 - (1.0 - p.experts_per_token / p.n_experts) ** tokens)
            if len(self._experts_cache) < 65536:
                self._experts_cache[tokens] = hit
        return hit

    def iteration_time(self, tokens: int, pairs: float, kv_read: float, seqs: int) -> float:
        """Seconds for one iteration of `seqs` sequences that runs `tokens` tokens attending
        to `pairs` (q, k) pairs and reading `kv_read` cached tokens' KV. Never 0 for a
        non-empty batch: the overhead keeps the clock moving."""
        p = self.profile
        compute = p.c_token * tokens + p.c_pair * pairs
        memory = p.m_const + p.m_expert * self.experts_touched(tokens) + p.m_kv * kv_read
        # (overhead + 0.0 * seqs) is overhead exactly: with c_seq = 0 nothing changes by a bit
        return (p.overhead_s + p.c_seq * seqs) + (max(memory, compute))

    # ---- runs of pure-decode iterations ----------------------------------------------------
    def _decode_lines(self, n: int, ctx0: int) -> tuple[float, float, float, float]:
        """Iteration j of a decode run (n sequences, context sum ctx0 at j = 0) costs
        overhead + c_seq * n + max(ac + bc*j, am + bm*j)."""
        p = self.profile
        ac = p.c_token * n + p.c_pair * ctx0
        bc = p.c_pair * n
        am = p.m_const + p.m_expert * self.experts_touched(n) + p.m_kv * ctx0
        bm = p.m_kv * n
        return ac, bc, am, bm

    def decode_run_time(self, n: int, ctx0: int, k: int) -> float:
        """Exact total time of k decode iterations of n sequences whose contexts sum to ctx0
        at the first iteration (each grows by one token per iteration)."""
        if k <= 0:
            return 0.0
        ac, bc, am, bm = self._decode_lines(n, ctx0)
        p = self.profile
        total = (p.overhead_s + p.c_seq * n) * k  # the n sequences' host-side cost, per step
        # compute - memory = da + db*j is linear in j, so it changes sign at most once: find the
        # cut c and sum each line as an arithmetic series on its side of it.
        da, db = ac - am, bc - bm
        if db == 0:
            line = (ac, bc) if da >= 0 else (am, bm)
            return total + _series(*line, 0, k)
        jstar = -da / db
        if db > 0:  # memory-bound first, compute-bound from j >= jstar
            c = min(max(math.ceil(jstar), 0), k)
            return total + _series(am, bm, 0, c) + _series(ac, bc, c, k)
        c = min(max(math.floor(jstar) + 1, 0), k)  # compute-bound while j <= jstar
        return total + _series(ac, bc, 0, c) + _series(am, bm, c, k)

    def decode_iters_done_by(self, n: int, ctx0: int, elapsed: float, k_max: int) -> int:
        """Smallest k <= k_max with decode_run_time(k) >= elapsed: the iterations that have
        finished (or are finishing) by `elapsed` seconds into the run."""
        return iters_done_by(self, n, ctx0, elapsed, k_max)


def iters_done_by(model: StepTimeModel, n: int, ctx0: int, elapsed: float, k_max: int) -> int:
    """Smallest k <= k_max with model.decode_run_time(n, ctx0, k) >= elapsed, by bisection
    (the run time grows with k): every StepTimeModel's decode_iters_done_by."""
    lo, hi = 0, k_max
    while lo < hi:
        mid = (lo + hi) // 2
        if model.decode_run_time(n, ctx0, mid) >= elapsed:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _series(a: float, b: float, j0: int, j1: int) -> float:
    """sum_{j=j0}^{j1-1} (a + b*j)."""
    if j1 <= j0:
        return 0.0
    count = j1 - j0
    return a * count + b * (j1 * (j1 - 1) - j0 * (j0 - 1)) / 2
