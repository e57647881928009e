"""The Recorder: step and program records, memory over time, STP cost terms, the summary.

Definitions (the same in sim and live):
- throughput: thundersim.metrics.window (one definition and one window for every policy compared).
- KV hit rate: prefix-cache hit tokens / prefix-cache query tokens, counted at every
  scheduling of a request, preemption restarts included (vLLM's prefix_cache_hits/queries).
- STP terms (token x seconds, per backend): every KV block is sampled every `sample_dt` into
  exactly one of decode (held by decoding requests), prefill (held by requests prefilling new
  tokens), recompute (held for tokens the program had computed before), caching (cached KV of
  programs in a tool call), unused (free or other cached capacity while some call waits for
  memory: withheld by the policy, or in an engine queue whose head cannot get its blocks), idle
  (the same while nothing waits for memory; a queue that waits only for the token budget waits
  for compute). Together they
  add up to capacity x time for every backend. Sampling, not event-exact integration, keeps the
  hot path free of bookkeeping; on the bundled trace at 96 programs, sampling every 1 s instead of
  every 0.02 s moves no term by more than 0.1 % of capacity x time. Terms are in whole blocks:
  the block holding a program's last, partial block of tokens (emptied when its call ends, so
  recomputed by its next call) counts as recompute while it is prefilled again.
- the paper's bound "unused < c_min x dt per node": `Recorder.stp_bound` (its definition there;
  c_min, the smallest context waiting for a backend's memory, is a column of the memory table).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thundersim.core.backend import Usage
from thundersim.core.cluster import chain_program
from thundersim.core.program import Phase, Program, Status

STP_TERMS = ("decode", "prefill", "recompute", "caching", "unused")
KV_CATEGORIES = STP_TERMS + ("idle",)

# One memory sample per backend: KV in use and cached, the STP categories, queue gauges, and
# c_min: the smallest context waiting for the backend's memory (NaN when none is known).
MEMORY_COLUMNS = [
    "t",
    "backend",
    "used_tokens",
    "cached_tokens",
    *KV_CATEGORIES,
    "running",
    "waiting",
    "held",
    "mem_wait",
    "c_min",
]
_COL = {name: i for i, name in enumerate(MEMORY_COLUMNS)}

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
        self._open: dict[str, Program] = {}  # arrived, not finished (insertion order)
        self._seen = 0  # entries of `programs` already looked at

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
        self._open.pop(program.id, None)

    # ---- sampling ------------------------------------------------------------------------
    def _is_acting(self, key: Any) -> bool:
        p = self.programs.get(chain_program(key)) if isinstance(key, str) else None
        return p is not None and p.phase is Phase.ACTING and p.status is not Status.DONE

    def _withheld_min(self) -> float:
        """Smallest prompt among the ready calls the policy withholds (programs WAITING or
        PAUSED with a call ready): the KV each would need if restored. NaN if none."""
        programs = self.programs
        if len(programs) != self._seen:  # new arrivals sit at the end of the dict
            new = len(programs) - self._seen
            for pid in reversed(programs):
                if new == 0:
                    break
                new -= 1
                p = programs[pid]
                if not p.status.is_finished:
                    self._open[pid] = p
            self._seen = len(programs)
        best = math.inf
        for p in self._open.values():
            if p.pending and p.status is not Status.ACTIVE:
                c = p.next_prompt_tokens()
                if c < best:
                    best = c
        return best if best < math.inf else math.nan

    def sample(self, now: float) -> None:
        """Integrate the previous state up to now (left Riemann sum), then record the new one."""
        self._integrate(now)
        state = []
        held = self.held()
        withheld = self._withheld_min() if held > 0 else math.nan
        for b in self.backends:
            if not hasattr(b, "kv_breakdown"):
                self._sample_stats(now, b, held, withheld, state)
                continue
            B = b.block_size
            kv = b.kv_breakdown(self._is_acting)
            # Something waits for memory: a call withheld by the policy (the paused queue is
            # global) or an engine queue whose head cannot get its blocks. A queue waiting only
            # for the token budget leaves free memory idle, not unused.
            blocked = b.waiting_for_memory()
            waiting = blocked or held > 0
            # the smallest context that waits for this backend's memory: a withheld call or a
            # request in its memory-blocked engine queue
            c_min = withheld
            if blocked:
                queued = min(seq.num_tokens for seq in b.waiting)
                c_min = queued if math.isnan(c_min) else min(c_min, queued)
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
                    waiting,
                    c_min,
                )
            )
        self._last_state = state
        self._last_t = now

    def _sample_stats(self, now: float, b, held: int, withheld: float, state: list) -> None:
        """A live engine exposes only KV in use, so its STP terms are coarser: used KV counts
        as decode, the rest as unused or idle. The sizes of requests in its queue are not
        exposed: c_min is the withheld calls' only."""
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
                waiting,
                withheld,
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
        """Integrate up to the end of the run. Samples taken after it (a simulation runs to the
        end of its chunk) are dropped from the terms: they are summed again from the samples up
        to `now`."""
        if self._last_t is not None and now < self._last_t:
            self._resum(now)
        else:
            self._integrate(now)
        self._last_t = now

    def _widths(self, now: float) -> list[tuple[int, list[tuple[tuple, float]]]]:
        """Per backend: its memory samples up to `now`, each with the seconds it stands for
        (to the next sample, the last one to `now`)."""
        by_backend: dict[int, list[tuple]] = {}
        for row in self.memory:
            if row[0] <= now:
                by_backend.setdefault(row[1], []).append(row)
        out = []
        for index, rows in by_backend.items():
            ts = [r[0] for r in rows[1:]] + [now]
            out.append((index, [(r, t1 - r[0]) for r, t1 in zip(rows, ts, strict=True)]))
        return out

    def _resum(self, now: float) -> None:
        pos = {b.index: i for i, b in enumerate(self.backends)}
        cols = [(k, _COL[k]) for k in KV_CATEGORIES]
        self.stp = [dict.fromkeys(KV_CATEGORIES, 0.0) for _ in self.backends]
        for index, rows in self._widths(now):
            acc = self.stp[pos[index]]
            for row, width in rows:
                for k, j in cols:
                    acc[k] += row[j] * width

    # ---- the paper's bound on unused memory -------------------------------------------------
    def stp_bound(self, dt: float | None) -> dict | None:
        """Check the paper's claim "unused < c_min * dt per node" on this run's samples.

        Per backend and per tick interval [k dt, (k+1) dt) (the policy's monitor period; ticks
        fire at multiples of dt from t = 0): U = the integral of the unused term over the
        interval (the same left Riemann sum over the memory samples that makes stp_cost's
        unused), and c_min = the smallest context waiting for that backend's memory at any
        sample of the interval (a call withheld by the policy, or a request in the engine's
        queue; the `c_min` memory column). An interval counts when something waited at one of
        its samples; it violates the bound when U > c_min * dt (the interval's actual length,
        for the last, shorter one). Intervals where the waiting contexts are unknown (a live
        engine's queue with nothing withheld) count as `unknown`, not as checked.

        Returns {"dt", "intervals", "violations", "worst_ratio" (max U / (c_min dt)),
        "worst" (backend, interval start, U, c_min of the worst interval), "unknown"}, or None
        for a policy without a tick (no dt)."""
        if not dt or self._last_t is None:
            return None
        end = self._last_t
        unused_col, wait_col, cmin_col = (_COL[k] for k in ("unused", "mem_wait", "c_min"))
        intervals: dict[tuple[int, int], list[float]] = {}  # (backend, k) -> [U, c_min]
        for index, rows in self._widths(end):
            for row, width in rows:
                if width <= 0 or not row[wait_col]:
                    continue  # nothing waited for memory: its spare memory is idle, not unused
                c = row[cmin_col]
                t, left = row[0], width
                while left > 1e-12:  # a sample's span may cross a tick: split it
                    k = int(t // dt)
                    seg = min(left, (k + 1) * dt - t)
                    if seg <= 0:  # t sits on the tick itself (rounding)
                        k, seg = k + 1, min(left, dt)
                    acc = intervals.setdefault((index, k), [0.0, math.inf])
                    acc[0] += row[unused_col] * seg
                    if not math.isnan(c):
                        acc[1] = min(acc[1], c)
                    t += seg
                    left -= seg
        violations = unknown = 0
        worst_ratio, worst = 0.0, None
        for (index, k), (unused, c_min) in sorted(intervals.items()):
            if c_min == math.inf:
                unknown += 1
                continue
            length = min(dt, end - k * dt)
            bound = c_min * length
            ratio = unused / bound if bound > 0 else (math.inf if unused > 0 else 0.0)
            if unused > bound:
                violations += 1
            if worst is None or ratio > worst_ratio:
                worst_ratio = ratio
                worst = {"backend": index, "t": k * dt, "unused_token_s": unused, "c_min": c_min}
        return {
            "dt": dt,
            "intervals": len(intervals) - unknown,
            "violations": violations,
            "worst_ratio": worst_ratio,
            "worst": worst,
            "unknown": unknown,
        }

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
        return pd.DataFrame(self.memory, columns=MEMORY_COLUMNS)


def quantile(values, q: float) -> float | None:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(np.quantile(arr, q)) if arr.size else None


def write_tables(out: Path, summary: dict, frames: dict[str, pd.DataFrame]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
