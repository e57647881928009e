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
- the paper's bound "unused < c_min x dt per node": `Recorder.stp_bound` (its definition in
  thundersim.metrics.bound; c_min, the smallest context waiting for a backend's memory, is a
  column of the memory table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from thundersim.core.backend import Backend, KVIntrospection, Usage
from thundersim.core.cluster import chain_program
from thundersim.core.program import Phase, Program, Status
from thundersim.metrics.bound import unused_bound

if TYPE_CHECKING:  # pandas is imported where tables are built, not at start-up
    import pandas as pd

_UNKNOWN = object()  # Recorder._is_acting: a chain not in its memo

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
    "held",  # ready calls the policy withholds (the Cluster's `withheld`)
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


PROGRAM_COLUMNS = [
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
]


class Recorder:
    """Listens to the Cluster (ClusterObserver) and samples the backends. Built before the
    Cluster, which is handed it as its observer; it learns of programs as they arrive.

    With a `journal` (thundersim.metrics.journal), step rows, memory samples and finished
    programs go to disk as they come and are not kept: what a run without an end needs."""

    def __init__(self, backends: Sequence[Backend], sample_dt: float, journal=None):
        if sample_dt <= 0:
            raise ValueError("sample_dt must be > 0")
        self.journal = journal
        self.failed_calls = 0  # calls that ended without an answer (not steps)
        # every program that arrived, in arrival order (with a journal: the unfinished ones)
        self.programs: dict[str, Program] = {}
        self.backends = list(backends)
        # which replicas show their block pool (the optional KVIntrospection protocol)
        self._pools = [isinstance(b, KVIntrospection) for b in self.backends]
        self.sample_dt = sample_dt
        self.steps: list[tuple] = []
        self.finished: list[Program] = []
        self.memory: list[tuple] = []
        self.stp = [dict.fromkeys(KV_CATEGORIES, 0.0) for _ in self.backends]
        self._last_t: float | None = None
        self._last_state: list[dict[str, float]] | None = None
        self._calls: dict[str, tuple[Usage, int]] = {}
        self._unfinished: dict[str, Program] = {}
        # _is_acting's memo: KV chain key -> its program while unfinished (None: none is), and
        # each program id's keys in it
        self._chain_owner: dict[str, Program | None] = {}
        self._chains_of: dict[str, list[str]] = {}

    # ---- ClusterObserver -----------------------------------------------------------------
    def on_arrival(self, program: Program) -> None:
        self.programs[program.id] = program
        self._unfinished[program.id] = program
        for key in self._chains_of.pop(program.id, ()):
            del self._chain_owner[key]  # remembered as no unfinished program's: now it is one

    def on_call_done(self, program: Program, usage: Usage, backend: int) -> None:
        self._calls[program.id] = (usage, backend)

    def on_step_done(self, program: Program, now: float) -> None:
        usage, backend = self._calls.pop(program.id)
        if usage.status != 200:  # refused or failed: no step was done (counted apart)
            self.failed_calls += 1
            return
        i = program.step - 1
        tool = program.call(i).tool
        prep = (program.ready_time - program.arrival_time) if i == 0 else 0.0
        self._keep(
            "steps",
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
            ),
        )

    def on_program_done(self, program: Program) -> None:
        del self._unfinished[program.id]
        for key in self._chains_of.get(program.id, ()):
            self._chain_owner[key] = None  # no unfinished program's now
        if self.journal is None:
            self.finished.append(program)
        else:
            self.journal.append("programs", _program_row(program))
            del self.programs[program.id]

    @property
    def steps_recorded(self) -> int:
        return self.journal.rows["steps"] if self.journal is not None else len(self.steps)

    def _keep(self, table: str, row: tuple) -> None:
        if self.journal is not None:
            self.journal.append(table, row)
        else:
            (self.steps if table == "steps" else self.memory).append(row)

    # ---- sampling ------------------------------------------------------------------------
    def _is_acting(self, key: Any) -> bool:
        # Every sample asks this of every cached chain of every replica, most of them chains of
        # programs long finished (their blocks stay cached until evicted): the answer's lookup,
        # `_unfinished.get(chain_program(key))`, is remembered per chain and redone only when
        # its program arrives or finishes (on_arrival, on_program_done).
        p = self._chain_owner.get(key, _UNKNOWN)
        if p is _UNKNOWN:
            if not isinstance(key, str):
                return False
            if len(self._chain_owner) >= 1 << 17:  # a bound on the memo, not a model constant
                self._chain_owner.clear()
                self._chains_of.clear()
            pid = chain_program(key)
            p = self._chain_owner[key] = self._unfinished.get(pid)
            self._chains_of.setdefault(pid, []).append(key)
        return p is not None and p.phase is Phase.ACTING

    def _withheld_min(self) -> float:
        """Smallest prompt among the ready calls the policy withholds (programs WAITING or
        PAUSED with a call ready): the KV each would need if restored. NaN if none."""
        best = math.inf
        for p in self._unfinished.values():
            if p.pending and p.status is not Status.ACTIVE:
                c = p.next_prompt_tokens()
                if c < best:
                    best = c
        return best if best < math.inf else math.nan

    def sample(self, now: float, withheld: int) -> None:
        """Integrate the previous state up to now (left Riemann sum), then record the new one.
        `withheld`: the ready calls the policy withholds now (the Cluster's count)."""
        self._integrate(now)
        state: list[dict[str, float]] = []
        withheld_min = self._withheld_min() if withheld > 0 else math.nan
        for b, has_pool in zip(self.backends, self._pools, strict=True):
            if has_pool:
                self._sample_pool(now, b, withheld, withheld_min, state)
            else:
                self._sample_stats(now, b, withheld, withheld_min, state)
        self._last_state = state
        self._last_t = now

    def _sample_pool(
        self, now: float, b: KVIntrospection, withheld: int, withheld_min: float, state: list
    ) -> None:
        """A replica that shows its block pool: every block in exactly one STP category."""
        kv = b.kv_snapshot(self._is_acting)
        # Something waits for memory: a call withheld by the policy (the paused queue is
        # global) or an engine queue whose head cannot get its blocks. A queue waiting only
        # for the token budget leaves free memory idle, not unused.
        blocked = kv.waiting_for_memory
        waiting = blocked or withheld > 0
        # the smallest context that waits for this backend's memory: a withheld call or a
        # request in its memory-blocked engine queue
        c_min = withheld_min
        if blocked:
            queued = kv.min_queued_tokens
            c_min = queued if math.isnan(c_min) else min(c_min, queued)
        spare = kv.empty + kv.cached_other
        cats = {
            "decode": kv.decode,
            "prefill": kv.prefill,
            "recompute": kv.recompute,
            "caching": kv.cached_acting,
            "unused": spare if waiting else 0,
            "idle": 0 if waiting else spare,
        }
        state.append(cats)
        self._keep(
            "memory",
            (
                now,
                b.index,
                kv.used_tokens,
                kv.cached_tokens,
                *(cats[k] for k in KV_CATEGORIES),
                kv.running,
                kv.waiting,
                withheld,
                waiting,
                c_min,
            ),
        )

    def _sample_stats(
        self, now: float, b: Backend, withheld: int, withheld_min: float, state: list
    ) -> None:
        """A live engine exposes only KV in use, so its STP terms are coarser: used KV counts
        as decode, the rest as unused or idle. The sizes of requests in its queue are not
        exposed: c_min is the withheld calls' only."""
        s = b.stats()
        waiting = s.waiting > 0 or withheld > 0
        spare = s.capacity_tokens - s.used_tokens
        cats = dict.fromkeys(KV_CATEGORIES, 0)
        cats["decode"] = s.used_tokens
        cats["unused" if waiting else "idle"] = spare
        state.append(cats)
        self._keep(
            "memory",
            (
                now,
                b.index,
                s.used_tokens,
                s.cached_tokens,
                *(cats[k] for k in KV_CATEGORIES),
                s.running,
                s.waiting,
                withheld,
                waiting,
                withheld_min,
            ),
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
        rows = self.memory
        if self.journal is not None:
            rows = self.journal.frame("memory").itertuples(index=False, name=None)
        for row in rows:
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
        """The paper's claim "unused < c_min * dt per node", checked on this run's samples
        (thundersim.metrics.bound); None for a policy without a tick (no dt)."""
        if not dt or self._last_t is None:
            return None
        unused, waited, c_min = (_COL[k] for k in ("unused", "mem_wait", "c_min"))
        samples = [
            (index, [(r[0], r[unused], r[waited], r[c_min], width) for r, width in rows])
            for index, rows in self._widths(self._last_t)
        ]
        return unused_bound(samples, dt, self._last_t)

    # ---- tables ----------------------------------------------------------------------------
    def steps_frame(self) -> pd.DataFrame:
        import pandas as pd

        if self.journal is not None:
            return self.journal.frame("steps")
        return pd.DataFrame(self.steps, columns=STEP_COLUMNS)

    def programs_frame(self) -> pd.DataFrame:
        import pandas as pd

        rows = pd.DataFrame(
            [_program_row(p) for p in self.programs.values()], columns=PROGRAM_COLUMNS
        )
        if self.journal is None:
            return rows
        done = self.journal.frame("programs")
        return pd.concat([done, rows], ignore_index=True) if len(rows) else done

    def memory_frame(self) -> pd.DataFrame:
        import pandas as pd

        if self.journal is not None:
            return self.journal.frame("memory")
        return pd.DataFrame(self.memory, columns=MEMORY_COLUMNS)


def _program_row(p: Program) -> tuple:
    ttfr = p.first_response_time - p.arrival_time if p.first_response_time is not None else math.nan
    return (
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


def quantile(values, q: float) -> float | None:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(np.quantile(arr, q)) if arr.size else None


def write_tables(out: Path, summary: dict, frames: dict[str, pd.DataFrame]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
