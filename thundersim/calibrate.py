"""Calibrate the simulator's latency model against a live engine, and validate the simulator
against that engine on the same trace.

Calibration measures, on one live server with an empty prefix cache (distinct token ids):
- prefill: single requests of L prompt tokens and one output token; one iteration costs
  overhead + c_token * L + c_pair * L(L+1)/2;
- decode: B concurrent requests of context c generating K tokens, timed at two K to cancel
  the prefill and the HTTP round trip; one iteration costs overhead + c_token * B + c_pair * B*c.
It fits (overhead, c_token, c_pair) by non-negative least squares on per-iteration times and
writes a `LatencyProfile` whose memory terms are zero: on the measured engine the compute line
already contains whatever memory traffic it has. `--latency-profile FILE` loads it.

This module composes live engines, policies and the simulator, so like the CLI it sits at the
edge of the core (nothing in the core imports it).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from scipy.optimize import nnls

from engine_adapters.vllm import TokenBook, VLLMBackend
from policies import make_policy
from thundersim.backend import Request
from thundersim.live import run_live
from thundersim.sim.catalog import make_setup
from thundersim.sim.latency import LatencyProfile
from thundersim.simulate import RunConfig, simulate


async def _timed_batch(
    backend: VLLMBackend, prompts: list[int], max_tokens: int, tag: str
) -> float:
    """Wall seconds for a batch of concurrent requests (distinct contexts: no cache hits)."""
    loop = asyncio.get_running_loop()
    done: list[asyncio.Future] = []
    t0 = time.perf_counter()
    for i, length in enumerate(prompts):
        fut = loop.create_future()
        done.append(fut)
        req = Request(f"{tag}-{i}", 0, length, max_tokens, None, 0, 0.0, 0, chain_id=f"{tag}-{i}")
        backend.submit(req, lambda u, f=fut: f.set_result(u) if not f.done() else None)
    await asyncio.gather(*done)
    return time.perf_counter() - t0


async def measure(
    url: str,
    prefill_lengths=(128, 256, 512, 1024, 2048),
    batches=(1, 2, 4, 8),
    context: int = 256,
    k1: int = 8,
    k2: int = 40,
    repeat: int = 3,
) -> dict:
    """Per-iteration samples: rows of (1, tokens, attention pairs) and seconds."""
    backend = VLLMBackend(0, url, TokenBook(vocab=2048, seed=int(time.time())))
    await backend.connect()
    X, y = [], []
    try:
        max_len = backend.capacity_tokens - k2 - 1
        await _timed_batch(backend, [64], 2, "warm")  # first request pays one-off set-up
        for n, length in enumerate(L for L in prefill_lengths if max_len >= L):
            ts = [await _timed_batch(backend, [length], 1, f"pre{n}r{r}") for r in range(repeat)]
            # one iteration plus one HTTP round trip (the last column, fitted apart)
            X.append((1.0, length, length * (length + 1) / 2, 1.0))
            y.append(float(np.median(ts)))
        for n, b in enumerate(batches):
            if b * (context + k2) > backend.capacity_tokens:
                break
            per = []
            for r in range(repeat):
                t1 = await _timed_batch(backend, [context] * b, k1, f"dec{n}a{r}")
                t2 = await _timed_batch(backend, [context] * b, k2, f"dec{n}b{r}")
                per.append(max(t2 - t1, 1e-6) / (k2 - k1))
            X.append((1.0, b, b * (context + (k1 + k2) / 2), 0.0))
            y.append(float(np.median(per)))
    finally:
        await backend.close()
    return {"X": X, "y": y}


def fit(samples: dict, source: str) -> LatencyProfile:
    X = np.asarray(samples["X"], dtype=float)
    y = np.asarray(samples["y"], dtype=float)
    # Scale columns so NNLS is well conditioned, then undo.
    scale = X.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(X / scale, y)
    coef = coef / scale
    samples["http_s"] = float(coef[3])  # the round trip: the simulator has no HTTP hop
    overhead = max(float(coef[0]), 1e-5)  # a step is never free
    return LatencyProfile(
        overhead_s=overhead,
        c_token=float(coef[1]),
        c_pair=float(coef[2]),
        m_const=0.0,
        m_expert=0.0,
        m_kv=0.0,
        source=source,
    )


def calibrate(url: str) -> tuple[LatencyProfile, dict]:
    samples = asyncio.run(measure(url))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    profile = fit(samples, source=f"calibrated against {url} at {when}")
    predicted = [
        profile.overhead_s + profile.c_token * x[1] + profile.c_pair * x[2] + http * x[3]
        for x, http in zip(samples["X"], [samples["http_s"]] * len(samples["X"]), strict=True)
    ]
    samples["predicted"] = predicted
    return profile, samples


def rel_error(sim: float, live: float) -> float | None:
    return None if live == 0 else (sim - live) / live


def compare_records(policy: str, sim: dict, live: dict) -> list[dict]:
    out = []
    for metric in (
        "throughput_steps_per_min",
        "throughput_whole_run_steps_per_min",
        "kv_hit_rate",
        "preemptions",
    ):
        s, v = float(sim[metric]), float(live[metric])
        out.append(
            {"policy": policy, "metric": metric, "sim": s, "live": v, "rel_error": rel_error(s, v)}
        )
    return out


__all__ = ["calibrate", "compare_records", "fit", "measure", "rel_error"]


async def _live_summary(url, specs, policy, concurrency, options) -> tuple[dict, int]:

    backend = VLLMBackend(0, url, TokenBook(vocab=2048))
    await backend.connect()
    try:
        result = await run_live(specs, make_policy(policy, options), [backend], concurrency)
        return result.summary, backend.capacity_tokens
    finally:
        await backend.close()


def validate(
    url: str,
    specs,
    profile: LatencyProfile,
    concurrency: int,
    options,
    policies=("vllm", "stp"),
    max_batched_tokens: int = 8192,
) -> list[dict]:
    """Run the (scaled) trace live and simulated with the calibrated profile, for each policy;
    records of policy, metric, sim, live, rel_error."""

    records = []
    for policy in policies:
        live, capacity = asyncio.run(_live_summary(url, specs, policy, concurrency, options))
        config = RunConfig(
            setup=make_setup(kv_capacity_override=capacity),
            concurrency=concurrency,
            block_size=128,  # vLLM's CPU backend
            max_batched_tokens=max_batched_tokens,
            latency_profile=profile,
            sample_dt=0.2,
            tool_manager=None,  # the live side waits each prep_s as it is (no sandbox model)
        )
        sim = simulate(specs, make_policy(policy, options), config).summary
        records += compare_records(policy, sim, live)
    return records
