"""The result of a run, simulated or live: its tables (steps, programs, memory, environments)
and its summary, computed one way for both clocks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from thundersim.metrics.recorder import STP_TERMS, quantile, write_tables
from thundersim.metrics.window import measure


@dataclass
class RunResult:
    summary: dict
    steps: pd.DataFrame
    programs: pd.DataFrame
    memory: pd.DataFrame
    env_usage: pd.DataFrame | None = None  # disk / ports / environments over time
    env_preps: pd.DataFrame | None = None  # one row per environment: prep time, concurrency

    def write(self, out: str | Path) -> None:
        frames = {"steps": self.steps, "programs": self.programs, "memory": self.memory}
        if self.env_usage is not None:
            frames["env_usage"] = self.env_usage
            frames["env_preps"] = self.env_preps
        write_tables(Path(out), self.summary, frames)


def imbalance(memory: pd.DataFrame, capacity: int) -> dict:
    """KV memory imbalance across replicas (the paper's Fig. 2a): at each sample, the spread
    (max - min) of the replicas' KV usage as a fraction of one replica's capacity."""
    if memory.empty or memory.backend.nunique() < 2:
        return {"mem_imbalance_peak": 0.0, "mem_imbalance_frac_over_20pct": 0.0}
    used = memory.pivot_table(index="t", columns="backend", values="used_tokens")
    spread = (used.max(axis=1) - used.min(axis=1)) / capacity
    return {
        "mem_imbalance_peak": float(spread.max()),
        "mem_imbalance_frac_over_20pct": float((spread > 0.2).mean()),
    }


def result_of(
    meta: dict, now, wall, interrupted, driver, recorder, backends, envs=None
) -> RunResult:
    """Tables and summary of a finished (or interrupted) run, sim or live alike; `meta` holds
    policy, trace, concurrency, replicas, seed, setup and kv_capacity_tokens."""
    steps = recorder.steps_frame()
    programs = recorder.programs_frame()
    memory = recorder.memory_frame()
    if len(memory):
        memory = memory[memory.t <= now]  # samples taken after the last program finished
    throughput = measure(steps.done_t, now, meta.get("horizon_s"), meta.get("warmup_s"))
    stats = [b.stats() for b in backends]
    queries = sum(s.prefix_queries for s in stats)
    hits = sum(s.prefix_hits for s in stats)
    stp_total = {k: sum(acc[k] for acc in recorder.stp) for k in STP_TERMS}
    done = programs[programs.status == "DONE"]
    summary = {
        **meta,
        "simulated_s": now,
        "wall_s": wall,
        "sim_speed": now / wall if wall > 0 else None,
        "interrupted": interrupted,
        "steps_completed": int(len(steps)),
        "programs_completed": int(len(done)),
        # a recycled closed loop has no total: the programs that arrived
        "programs_total": int(len(programs)) + (0 if driver.recycle else len(driver.queue)),
        **throughput,
        "kv_hit_rate": hits / queries if queries else 0.0,
        "preemptions": sum(s.preemptions for s in stats),
        "recompute_tokens": sum(s.recompute_tokens for s in stats),
        "prompt_tokens_computed": sum(s.prompt_tokens for s in stats),
        "stp_cost": stp_total,
        "stp_idle": sum(acc["idle"] for acc in recorder.stp),
        "stp_per_backend": recorder.stp,
        # the paper's bound "unused < c_min x dt per node", checked per tick interval (None for a
        # policy without a tick); reported, never enforced
        "stp_unused_bound": recorder.stp_bound(meta.get("tick_interval_s")),
        "ttfr_p50_s": quantile(programs.ttfr_s, 0.5),
        "ttfr_p99_s": quantile(programs.ttfr_s, 0.99),
        "step_breakdown_mean_s": {
            k: float(steps[k].mean()) if len(steps) else None
            for k in ("hold_s", "queue_s", "prefill_s", "decode_s", "tool_s", "prep_s")
        },
        "engine_iterations": sum(s.extra.get("iterations", 0) for s in stats),
        "pins": sum(s.extra.get("pins", 0) for s in stats),
        **imbalance(memory, meta["kv_capacity_tokens"]),
    }
    if envs is None:
        return RunResult(summary, steps, programs, memory)
    summary["env"] = envs.summary(recorder.programs.values())
    return RunResult(summary, steps, programs, memory, envs.usage_frame(), envs.preps_frame())
