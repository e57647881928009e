"""A grid of simulated runs (policies x concurrency x routers) in parallel processes, as one
table. Each point is an independent `simulate` call; results come back as flat rows.

Interrupting keeps the rows already finished; the caller writes them. Like the CLI, this module
composes the parts (it builds policies by name), so nothing in the core imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from itertools import product

import pandas as pd

from thundersim.core.policy import PolicyOptions
from thundersim.metrics.recorder import STP_TERMS
from thundersim.metrics.window import check_table, window_columns
from thundersim.policies import make_policy
from thundersim.sim.simulate import RunConfig, simulate
from thundersim.traces.loader import load_trace

COLUMNS = [
    "policy",
    "router",
    "concurrency",
    "replicas",
    "throughput_steps_per_min",
    "throughput_metric",
    "throughput_window_start_s",
    "throughput_window_end_s",
    "throughput_steady_steps_per_min",
    "throughput_whole_run_steps_per_min",
    "kv_hit_rate",
    "preemptions",
    "recompute_tokens",
    *(f"stp_{k}_pct" for k in STP_TERMS),
    "stp_idle_pct",
    "ttfr_p50_s",
    "ttfr_p99_s",
    "mem_imbalance_peak",
    "mem_imbalance_frac_over_20pct",
    "simulated_s",
    "wall_s",
]


@dataclass(frozen=True)
class Point:
    policy: str
    router: str
    concurrency: int | None


def grid(policies: Sequence[str], concurrencies: Sequence[int], routers: Sequence[str]):
    return [Point(p, r, c or None) for p, c, r in product(policies, concurrencies, routers)]


def row(point: Point, summary: dict) -> dict:
    total = sum(summary["stp_cost"].values()) + summary["stp_idle"]
    share = {
        f"stp_{k}_pct": 100 * v / total if total else 0.0 for k, v in summary["stp_cost"].items()
    }
    return {
        "policy": point.policy,
        "router": point.router,
        "concurrency": point.concurrency or 0,
        "replicas": summary["replicas"],
        "throughput_steps_per_min": summary["throughput_steps_per_min"],
        "throughput_metric": summary["throughput_metric"],
        **window_columns(summary),
        "throughput_steady_steps_per_min": summary["throughput_steady_steps_per_min"],
        "throughput_whole_run_steps_per_min": summary["throughput_whole_run_steps_per_min"],
        "kv_hit_rate": summary["kv_hit_rate"],
        "preemptions": summary["preemptions"],
        "recompute_tokens": summary["recompute_tokens"],
        **share,
        "stp_idle_pct": 100 * summary["stp_idle"] / total if total else 0.0,
        "ttfr_p50_s": summary["ttfr_p50_s"],
        "ttfr_p99_s": summary["ttfr_p99_s"],
        "mem_imbalance_peak": summary["mem_imbalance_peak"],
        "mem_imbalance_frac_over_20pct": summary["mem_imbalance_frac_over_20pct"],
        "simulated_s": summary["simulated_s"],
        "wall_s": summary["wall_s"],
    }


_TRACES: dict[str, list] = {}  # per worker process: trace path -> programs (loaded once)


def run_point(trace: str, point: Point, config: RunConfig, options: PolicyOptions) -> dict:
    specs = _TRACES.get(trace)
    if specs is None:
        specs = _TRACES[trace] = load_trace(trace)
    policy = make_policy(point.policy, replace(options, router=point.router))
    result = simulate(specs, policy, replace(config, concurrency=point.concurrency), trace)
    return row(point, result.summary)


def pool_map(
    fn: Callable,
    jobs: Sequence[tuple],
    workers: int | None,
    on_result: Callable[[int, object], None],
    on_error: Callable[[int, Exception], Exception] | None = None,
) -> bool:
    """fn(*job) for every job in worker processes; on_result(i, value) as each one finishes.
    A failing job raises (on_error(i, exc) when given, to name the job). Returns True when
    Ctrl-C stopped it: the results already handed over are kept, the rest cancelled."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    i = futures[f]
                    try:
                        value = f.result()
                    except Exception as exc:
                        named = on_error(i, exc) if on_error is not None else exc
                        if named is exc:
                            raise
                        raise named from exc
                    on_result(i, value)
        except KeyboardInterrupt:
            for f in pending:
                f.cancel()
            return True
    return False


def run_grid(
    trace: str,
    points: Sequence[Point],
    config: RunConfig,
    options: PolicyOptions,
    workers: int | None = None,
    on_done: Callable[[dict], None] | None = None,
) -> tuple[pd.DataFrame, bool]:
    """Run every point; returns (table in grid order, interrupted)."""
    rows: dict[int, dict] = {}

    def keep(i: int, row: dict) -> None:
        rows[i] = row
        if on_done is not None:
            on_done(row)

    jobs = [(trace, pt, config, options) for pt in points]
    interrupted = pool_map(run_point, jobs, workers, keep)
    table = pd.DataFrame([rows[i] for i in sorted(rows)], columns=COLUMNS)
    # the grid shares one config: this holds unless the window code breaks
    check_table(table.to_dict("records"), "grid rows")
    return table, interrupted
