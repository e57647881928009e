"""Calibrate the simulator's latency model against a live engine, and validate the simulator
against that engine on the same trace.

Calibration measures, on one live server, the simulator's iteration time (see
thundersim.sim.latency) with its memory terms at zero: overhead + c_seq * sequences + c_token *
tokens + c_pair * attention pairs, where a chunk of m tokens after s cached ones attends to
m*s + m(m+1)/2 pairs and a decode token to the tokens computed before it. Each row counts
(overhead, tokens, pairs, sequences, round trips):
- prefill: a request of L new prompt tokens and one output token, then the same prompt again,
  which the prefix cache serves but its last partial block (h tokens hit, as the usage
  reports). Each is one iteration of one sequence plus one HTTP round trip with the same body,
  so the difference is the prefill of h tokens alone: h tokens, h(h+1)/2 pairs, no overhead, no
  sequence, no round trip (nor the JSON of a body that grows with L, which would pass for a
  per-token cost). An engine that reports no hits gets raw rows: one iteration of one sequence
  plus a round trip (the three constant together; decode rows tell them apart).
- decode: B concurrent requests of prompt c generating K tokens, timed at two K to cancel the
  prefill and the round trip: per iteration B sequences, B tokens and B times the mean context
  of the iterations between, c + (K1 + K2 - 3)/2 (decode iteration i attends to c + i - 1
  tokens). Decode runs cover several contexts at each batch size: at one context B and B*c
  move together, so the per-token and per-pair costs of a decode iteration could not be told
  apart.
In a decode row tokens = sequences = B, so decode alone measures only c_token + c_seq: the
prefill rows (many tokens, one sequence or none) pin c_token, and decode the rest. On the CPU
vLLM the difference matters: an extra decode sequence costs far more than a prefill token
(sampling and input preparation per sequence), and a model without c_seq fitted a compromise
that could put c_token at 0.
The fit is non-negative least squares, each row weighted by the spread of its repeats (with a
floor of 1 % of the row), and refuses samples that cannot tell the coefficients apart. The
`LatencyProfile` it writes has zero memory terms: on the measured engine the compute line
already contains whatever memory traffic it has. `--latency-profile FILE` loads it.

The live engine is built by name from thundersim.engine_adapters.registry ("vllm" by default);
the measurements assume vLLM's semantics (per-request cached tokens, `ignore_eos`), which any
OpenAI-compatible engine with prefix caching can offer.

This module composes live engines, policies and the simulator, so like the CLI it sits at the
edge of the core (nothing in the core imports it).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from scipy.optimize import nnls

from thundersim.core.backend import Backend, Request, Usage
from thundersim.engine_adapters.local import TINY_VOCAB
from thundersim.engine_adapters.registry import make_backends
from thundersim.engine_adapters.tokens import TokenBook
from thundersim.live.driver import run_live
from thundersim.metrics.window import check_comparable
from thundersim.policies import make_policy
from thundersim.sim.catalog import make_setup
from thundersim.sim.latency import LatencyProfile
from thundersim.sim.simulate import RunConfig, simulate


def _settle(fut: asyncio.Future, result=None, exc: Exception | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


async def _timed_batch(
    backend: Backend, book: TokenBook, prompts: list[int], max_tokens: int, tag: str
) -> tuple[float, list[Usage]]:
    """Wall seconds for a batch of concurrent requests, and their usage. Each request's token
    ids are its tag's (in `book`, the backend's TokenBook): a new tag has no cache hits, the
    same tag again the same prompt. A call the engine could not serve fails the measurement."""
    loop = asyncio.get_running_loop()
    reqs = [
        Request(f"{tag}-{i}", 0, length, max_tokens, None, 0, 0.0, 0, chain_id=f"{tag}-{i}")
        for i, length in enumerate(prompts)
    ]
    for req in reqs:
        book.prompt(req)  # draw the token ids before the clock starts (O(length))
    done: list[asyncio.Future] = []
    t0 = time.perf_counter()
    for req in reqs:
        fut = loop.create_future()
        done.append(fut)
        backend.submit(
            req,
            lambda u, f=fut: _settle(f, u),
            lambda _req, exc, f=fut: _settle(f, exc=exc),
        )
    usages = await asyncio.gather(*done)
    return time.perf_counter() - t0, list(usages)


# The measurement design: prefill lengths and decode contexts up to the tiny local model's 4,096
# tokens, batches up to what its default 2-core server runs in a few seconds per repeat.
# provenance: estimate — a design that tells the four coefficients apart (test_calibrate)
PREFILL_LENGTHS = (128, 256, 512, 1024, 2048)
DECODE_BATCHES = (1, 2, 4, 8)  # provenance: estimate — see PREFILL_LENGTHS
DECODE_CONTEXTS = (128, 512, 2048)  # provenance: estimate — see PREFILL_LENGTHS

Row = tuple[float, float, float, float, float]  # (overhead, tokens, pairs, seqs, round trips)
COLUMNS = ("overhead", "tokens", "pairs", "seqs", "round_trips")


def prefill_row(length: int) -> Row:
    """One raw prefill request of `length` tokens: one iteration of one sequence plus one
    round trip (the last column, fitted apart)."""
    return (1.0, float(length), length * (length + 1) / 2, 1.0, 1.0)


def prefill_gain_row(hit: int) -> Row:
    """A cold prefill minus the same prompt served from the prefix cache (`hit` tokens): the
    prefill of `hit` tokens from scratch, no overhead, no sequence (one on either side), no
    round trip."""
    return (0.0, float(hit), hit * (hit + 1) / 2, 0.0, 0.0)


def decode_row(batch: int, context: int, k1: int, k2: int) -> Row:
    """The mean decode iteration between output lengths k1 and k2 of `batch` requests of
    `context` prompt tokens: `batch` sequences of one token each."""
    return (1.0, float(batch), batch * (context + (k1 + k2 - 3) / 2), float(batch), 0.0)


def predict(profile: LatencyProfile, row: Row, http_s: float = 0.0) -> float:
    """A row's seconds under a calibrated profile (memory terms zero) and round trip."""
    one, tokens, pairs, seqs, trips = row
    p = profile
    return (
        p.overhead_s * one
        + p.c_token * tokens
        + p.c_pair * pairs
        + p.c_seq * seqs
        + (http_s * trips)
    )


def decode_design(
    capacity: int,
    max_len: int,
    batches=DECODE_BATCHES,
    contexts=DECODE_CONTEXTS,
    k2: int = 40,
) -> list[tuple[int, int]]:
    """(batch, context) pairs that fit the engine: every request within max_len, the batch
    within the KV pool."""
    return [
        (b, c) for c in contexts for b in batches if c + k2 <= max_len and b * (c + k2) <= capacity
    ]


def _estimate(values: list[float]) -> tuple[float, float]:
    """Median of repeats and the standard error of it (from their median absolute deviation)."""
    v = np.asarray(values, dtype=float)
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    return med, 1.4826 * mad / np.sqrt(len(v))


async def measure(
    url: str,
    prefill_lengths=PREFILL_LENGTHS,
    batches=DECODE_BATCHES,
    contexts=DECODE_CONTEXTS,
    k1: int = 8,
    k2: int = 40,
    repeat: int = 5,
    engine: str = "vllm",
) -> dict:
    """Samples: rows of COLUMNS (see prefill_gain_row / prefill_row / decode_row), seconds `y`
    (median of `repeat`), their standard errors `sd`, each row's `kind` ("prefill" or
    "decode"), and `prefill` ("cache-hit difference" or "raw")."""
    # Ids below the tiny local model's vocabulary are valid ids of any real model too; a seed
    # of its own per run: an earlier run's prompts, still cached, would be hits
    book = TokenBook(vocab=TINY_VOCAB, seed=int(time.time()))
    [backend] = make_backends(engine, [url], book)
    await backend.connect()
    gain: list[tuple[Row, float, float]] = []
    raw: list[tuple[Row, float, float]] = []
    decode: list[tuple[Row, float, float]] = []
    try:
        max_len = backend.capacity_tokens - 1
        await _timed_batch(backend, book, [64], 2, "warm")  # first request pays one-off set-up
        # Repeats go round the whole design (not one row's repeats in a row), so a burst of
        # load on the machine spoils one repeat of several rows, which their medians drop.
        lengths = [L for L in prefill_lengths if max_len - k2 >= L]
        cold: dict[int, list[float]] = {L: [] for L in lengths}
        diff: dict[int, list[float]] = {L: [] for L in lengths}
        hits: dict[int, set[int]] = {L: set() for L in lengths}
        design = decode_design(backend.capacity_tokens, max_len, batches, contexts, k2)
        per: dict[tuple[int, int], list[float]] = {bc: [] for bc in design}
        for r in range(repeat):
            for n, length in enumerate(lengths):
                t_cold, u_cold = await _timed_batch(backend, book, [length], 1, f"pre{n}r{r}")
                t_warm, u_warm = await _timed_batch(backend, book, [length], 1, f"pre{n}r{r}")
                cold[length].append(t_cold)
                diff[length].append(t_cold - t_warm)
                hits[length].add(u_warm[0].cached_tokens - u_cold[0].cached_tokens)
            for n, (b, c) in enumerate(design):
                t1, _ = await _timed_batch(backend, book, [c] * b, k1, f"dec{n}a{r}")
                t2, _ = await _timed_batch(backend, book, [c] * b, k2, f"dec{n}b{r}")
                per[b, c].append((t2 - t1) / (k2 - k1))
        for length in lengths:
            raw.append((prefill_row(length), *_estimate(cold[length])))
            if len(hits[length]) == 1 and (hit := min(hits[length])) > 0:
                gain.append((prefill_gain_row(hit), *_estimate(diff[length])))
        for (b, c), times in per.items():
            decode.append((decode_row(b, c, k1, k2), *_estimate(times)))
    finally:
        await backend.close()
    # Raw rows only from an engine that never reported a prefix-cache hit (they carry the
    # round trip and the request's JSON, which grows with its length).
    prefill = gain if gain else raw
    rows = prefill + decode
    return {
        "X": [r for r, _, _ in rows],
        "y": [y for _, y, _ in rows],
        "sd": [sd for _, _, sd in rows],
        "kind": ["prefill"] * len(prefill) + ["decode"] * len(decode),
        "prefill": "cache-hit difference" if gain else "raw",
    }


def fit(samples: dict, source: str) -> LatencyProfile:
    """Weighted non-negative least squares: each row divided by its uncertainty, the standard
    error of its repeats (`sd`) but at least 1 % of the row (without `sd`: 1 %, i.e. relative
    errors). The round-trip column may be zero in every row (then its coefficient is 0); the
    other four must be measured. ValueError when the rows cannot tell the coefficients apart:
    decode rows alone, for one, have as many sequences as tokens."""
    X = np.asarray(samples["X"], dtype=float)
    y = np.asarray(samples["y"], dtype=float)
    n_cols = len(COLUMNS)
    if X.ndim != 2 or X.shape[1] != n_cols or len(y) != len(X) or not np.isfinite(y).all():
        raise ValueError(f"calibration samples need rows of {n_cols} columns and finite times")
    sd = np.asarray(samples.get("sd", np.zeros_like(y)), dtype=float)
    floor = 0.01 * np.abs(y)
    if (floor <= 0).any():
        raise ValueError("calibration samples need non-zero times")
    sigma = np.maximum(sd, floor)
    used = np.flatnonzero(np.abs(X).sum(axis=0) > 0)
    W = X[:, used] / sigma[:, None]
    # Scale columns so NNLS is well conditioned, then undo.
    scale = np.abs(W).max(axis=0)
    W = W / scale
    if np.linalg.matrix_rank(W) < len(used) or used[:4].tolist() != [0, 1, 2, 3]:
        raise ValueError(
            "calibration samples cannot tell overhead, per-token, per-pair and per-sequence "
            "costs apart: measure prefill at several lengths (a decode row has as many "
            "sequences as tokens) and decode at several batch sizes and contexts"
        )
    sol, _ = nnls(W, y / sigma)
    coef = np.zeros(n_cols)
    coef[used] = sol / scale
    samples["http_s"] = float(coef[4])  # raw rows' round trip: the simulator has no HTTP hop
    overhead = max(float(coef[0]), 1e-5)  # a step is never free
    return LatencyProfile(
        overhead_s=overhead,
        c_token=float(coef[1]),
        c_pair=float(coef[2]),
        c_seq=float(coef[3]),
        m_const=0.0,
        m_expert=0.0,
        m_kv=0.0,
        source=source,
    )


def calibrate(url: str, engine: str = "vllm") -> tuple[LatencyProfile, dict]:
    samples = asyncio.run(measure(url, engine=engine))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    profile = fit(samples, source=f"calibrated against {url} at {when}")
    http = samples["http_s"]
    samples["predicted"] = [predict(profile, x, http) for x in samples["X"]]
    return profile, samples


# The scheduler budget of the live engine `validate` runs against by default: a vLLM API server
# on CPU started without --max-num-batched-tokens / --max-num-seqs (what `engine up` starts).
# provenance: spec — vLLM 0.32 EngineArgs.get_batch_defaults, CPU branch: OPENAI_API_SERVER
# 2048 x world_size tokens and 128 x world_size sequences (vllm/engine/arg_utils.py)
LIVE_CPU_MAX_BATCHED_TOKENS = 2048
LIVE_CPU_MAX_NUM_SEQS = 128  # provenance: spec — the same function and branch


def rel_error(sim: float, live: float) -> float | None:
    return None if live == 0 else (sim - live) / live


def compare_records(policy: str, sim: dict, live: dict) -> list[dict]:
    """Sim vs live, metric by metric; both sides must measure throughput by one definition
    (thundersim.metrics.window: the same finite trace is measured whole on both)."""
    kind = check_comparable([sim, live], f"{policy}: the simulated and the live run")
    out = []
    for metric in ("throughput_steps_per_min", "kv_hit_rate", "preemptions"):
        s, v = float(sim[metric]), float(live[metric])
        out.append(
            {
                "policy": policy,
                "metric": metric,
                "sim": s,
                "live": v,
                "rel_error": rel_error(s, v),
                "throughput_metric": kind[0],
            }
        )
    return out


__all__ = [
    "calibrate",
    "compare_records",
    "decode_design",
    "decode_row",
    "fit",
    "measure",
    "predict",
    "prefill_gain_row",
    "prefill_row",
    "rel_error",
    "sim_config",
]


async def _live_summary(url, specs, policy, concurrency, options, engine) -> tuple[dict, int, int]:
    """The live run's summary, and the engine's KV pool and block size (from its stats: the
    simulated replica is given the same)."""
    [backend] = make_backends(engine, [url], TokenBook(vocab=TINY_VOCAB))
    await backend.connect()
    try:
        result = await run_live(specs, make_policy(policy, options), [backend], concurrency)
        block = backend.stats().block_size
        if block < 1:
            raise ValueError(
                f"engine {engine!r} at {url} reports KV block size {block}: validate cannot "
                "size the simulated replica"
            )
        # The simulated replica is sized as vLLM sized this one (num_gpu_blocks, the null block
        # included: capacity_tokens excludes it) and reserves its own null block the same way.
        return result.summary, backend.capacity_tokens + block, block
    finally:
        await backend.close()


def sim_config(
    profile: LatencyProfile,
    capacity: int,
    block: int,
    concurrency: int,
    max_batched_tokens: int = LIVE_CPU_MAX_BATCHED_TOKENS,
    max_num_seqs: int = LIVE_CPU_MAX_NUM_SEQS,
) -> RunConfig:
    """The simulated replica `validate` compares with a live one: its pool (`capacity` as
    vLLM sized it) and block size, its scheduler budget, the calibrated profile."""
    return RunConfig(
        setup=make_setup(kv_capacity_override=capacity),
        concurrency=concurrency,
        block_size=block,
        max_batched_tokens=max_batched_tokens,
        max_num_seqs=max_num_seqs,
        latency_profile=profile,
        sample_dt=0.2,
        tool_manager=None,  # the live side waits each prep_s as it is (no sandbox model)
    )


def validate(
    url: str,
    specs,
    profile: LatencyProfile,
    concurrency: int,
    options,
    policies=("vllm", "stp"),
    max_batched_tokens: int = LIVE_CPU_MAX_BATCHED_TOKENS,
    max_num_seqs: int = LIVE_CPU_MAX_NUM_SEQS,
    engine: str = "vllm",
) -> list[dict]:
    """Run the (scaled) trace live and simulated with the calibrated profile, for each policy;
    records of policy, metric, sim, live, rel_error. The simulated engine gets the live one's
    block size and pool (from its metrics) and scheduler budget (pass the server's
    --max-num-batched-tokens / --max-num-seqs when it was started with them)."""

    records = []
    for policy in policies:
        live, capacity, block = asyncio.run(
            _live_summary(url, specs, policy, concurrency, options, engine)
        )
        config = sim_config(profile, capacity, block, concurrency, max_batched_tokens, max_num_seqs)
        sim = simulate(specs, make_policy(policy, options), config).summary
        records += compare_records(policy, sim, live)
    return records
