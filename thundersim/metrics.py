"""The Recorder: step and program records, memory over time, STP cost terms, the summary.

Definitions (the same in sim and live):
- throughput: thundersim.window (one definition and one window for every policy compared).
- KV hit rate: prefix-cache hit tokens / prefix-cache query tokens, counted at every
  scheduling of a request, preemption restarts included (vLLM's prefix_cache_hits/queries).
- STP terms (token x seconds, per backend): every KV block is sampled every `sample_dt` into
  exactly one of decode (held by decoding requests), prefill (held by requests prefilling new
  tokens), recompute (held for tokens the program had computed before), caching (cached KV of
  programs in a tool call), unused (free or other cached capacity while some call waits: in the
  engine's queue or withheld by the policy), idle (the same while nothing waits). Together they
  add up to capacity x time for every backend. Sampling, not event-exact integration, keeps the
  hot path free of bookkeeping; on the bundled trace at 96 programs, sampling every 1 s instead of
  every 0.02 s moves no term by more than 0.1 % of capacity x time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thundersim.backend import Usage
from thundersim.cluster import chain_program
from thundersim.program import Phase, Program, Status

STP_TERMS = ("decode", "prefill", "recompute", "caching", "unused")
KV_CATEGORIES = STP_TERMS + ("idle",)

STEP_COLUMNS = [
    "program",
    "step",
    "backend",
    "tool",
    "ready_t",
    "sent_t",
    "schedule_t",
    "first_token_t",
    "response_t",
    "done_t",
    "prompt_tokens",
    "cached_tokens",
    "output_tokens",
    "recompute_tokens",
    "preemptions",
    "hold_s",
    "queue_s",
    "prefill_s",
    "decode_s",
    "tool_s",
    "prep_s",
]


class Recorder:
    """Listens to the Cluster (ClusterObserver) and samples the backends."""

    def __init__(self, cluster_programs: dict[str, Program], backends: list, sample_dt: float):
        if sample_dt <= 0:
            raise ValueError("sample_dt must be > 0")
        self.programs = cluster_programs
        self.backends = backends
        self.sample_dt = sample_dt
        self.steps: list[tuple] = []
        self.finished: list[Program] = []
        self.memory: list[tuple] = []
        self.stp = [dict.fromkeys(KV_CATEGORIES, 0.0) for _ in backends]
        self._last_t: float | None = None
        self._last_state: list[dict[str, float]] | None = None
        self._calls: dict[str, tuple[Usage, int]] = {}
        self.held = lambda: 0  # set by the runner: calls withheld by the policy

    # ---- ClusterObserver -----------------------------------------------------------------
    def on_call_done(self, program: Program, usage: Usage, backend: int) -> None:
        self._calls[program.id] = (usage, backend)

    def on_step_done(self, program: Program, now: float) -> None:
        usage, backend = self._calls.pop(program.id)
        i = program.step - 1
        tool = program.call(i).tool
        prep = (program.ready_time - program.arrival_time) if i == 0 else 0.0
        self.steps.append(
            (
                program.id,
                i,
                backend,
                tool,
                program.call_ready_time,
                program.call_sent_time,
                usage.schedule_time,
                usage.first_token_time,
                usage.finish_time,
                now,
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.output_tokens,
                usage.recompute_tokens,
                usage.preemptions,
                program.call_sent_time - program.call_ready_time,
                usage.schedule_time - program.call_sent_time,
                usage.first_token_time - usage.schedule_time,
                usage.finish_time - usage.first_token_time,
                now - usage.finish_time,
                prep,
            )
        )

    def on_program_done(self, program: Program) -> None:
        self.finished.append(program)

    # ---- sampling ------------------------------------------------------------------------
    def _is_acting(self, key: Any) -> bool:
        p = self.programs.get(chain_program(key)) if isinstance(key, str) else None
        return p is not None and p.phase is Phase.ACTING and p.status is not Status.DONE

    def sample(self, now: float) -> None:
        """Integrate the previous state up to now (left Riemann sum), then record the new one."""
        self._integrate(now)
        state = []
        held = self.held()
        for b in self.backends:
            if not hasattr(b, "kv_breakdown"):
                self._sample_stats(now, b, held, state)
                continue
            B = b.block_size
            kv = b.kv_breakdown(self._is_acting)
            waiting = len(b.waiting) > 0 or held > 0
            spare = (kv["empty"] + kv["cached_other"]) * B
            cats = {
                "decode": kv["decode"] * B,
                "prefill": kv["prefill"] * B,
                "recompute": kv["recompute"] * B,
                "caching": kv["cached_acting"] * B,
                "unused": spare if waiting else 0,
                "idle": 0 if waiting else spare,
            }
            state.append(cats)
            self.memory.append(
                (
                    now,
                    b.index,
                    b.pool.used * B,
                    b.pool.cached_free * B,
                    *(cats[k] for k in KV_CATEGORIES),
                    len(b.running),
                    len(b.waiting),
                    held,
                )
            )
        self._last_state = state
        self._last_t = now

    def _sample_stats(self, now: float, b, held: int, state: list) -> None:
        """A live engine exposes only KV in use, so its STP terms are coarser: used KV counts
        as decode, the rest as unused or idle."""
        s = b.stats()
        waiting = s.waiting > 0 or held > 0
        spare = s.capacity_tokens - s.used_tokens
        cats = dict.fromkeys(KV_CATEGORIES, 0)
        cats["decode"] = s.used_tokens
        cats["unused" if waiting else "idle"] = spare
        state.append(cats)
        self.memory.append(
            (
                now,
                b.index,
                s.used_tokens,
                s.cached_tokens,
                *(cats[k] for k in KV_CATEGORIES),
                s.running,
                s.waiting,
                held,
            )
        )

    def _integrate(self, now: float) -> None:
        if self._last_state is None or self._last_t is None:
            return
        dt = now - self._last_t
        for acc, cats in zip(self.stp, self._last_state, strict=True):
            for k, v in cats.items():
                acc[k] += v * dt

    def finalize(self, now: float) -> None:
        self._integrate(now)
        self._last_t = now

    # ---- tables ----------------------------------------------------------------------------
    def steps_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.steps, columns=STEP_COLUMNS)

    def programs_frame(self) -> pd.DataFrame:
        rows = []
        for p in self.programs.values():
            ttfr = (
                p.first_response_time - p.arrival_time
                if p.first_response_time is not None
                else math.nan
            )
            rows.append(
                (
                    p.id,
                    p.workload,
                    p.arrival_time,
                    p.ready_time if p.ready_time is not None else math.nan,
                    p.first_response_time if p.first_response_time is not None else math.nan,
                    p.finish_time if p.finish_time is not None else math.nan,
                    p.step,
                    p.n_steps,
                    p.status.name,
                    ttfr,
                    p.peak_context,
                )
            )
        return pd.DataFrame(
            rows,
            columns=[
                "program",
                "workload",
                "arrival_t",
                "ready_t",
                "first_response_t",
                "finish_t",
                "steps_done",
                "steps",
                "status",
                "ttfr_s",
                "peak_context",
            ],
        )

    def memory_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            self.memory,
            columns=[
                "t",
                "backend",
                "used_tokens",
                "cached_tokens",
                *KV_CATEGORIES,
                "running",
                "waiting",
                "held",
            ],
        )


def quantile(values, q: float) -> float | None:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(np.quantile(arr, q)) if arr.size else None


def write_tables(out: Path, summary: dict, frames: dict[str, pd.DataFrame]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
