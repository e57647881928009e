"""A grid of simulated runs (policies x concurrency x routers) in parallel processes, as one
table. Each point is an independent `simulate` call; results come back as flat rows.

Interrupting keeps the rows already finished; the caller writes them. Like the CLI, this module
composes the parts (it builds policies by name), so nothing in the core imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from itertools import product

import pandas as pd

from thundersim.core.policy import PolicyOptions
from thundersim.metrics.recorder import STP_TERMS
from thundersim.metrics.window import check_table, window_columns
from thundersim.policies import make_policy
from thundersim.sim.simulate import RunConfig, simulate
from thundersim.traces.loader import load_trace

log = logging.getLogger(__name__)

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


class WorkerDied(RuntimeError):
    """A job's worker process ended before the job did (killed, out of memory, or an
    initializer that failed), with the job alone in its pool: the job, not a neighbour."""


# A pool that broke this many times in a row with no job finished runs the rest one job per
# pool, so that the next break names its job.
# provenance: estimate — one break is a worker killed from outside; two in a row with nothing
# finished point at a job (or an initializer) that kills every worker it gets
_BREAKS_BEFORE_ALONE = 2
# provenance: estimate — a SIGKILLed process is reaped in milliseconds; this bounds the wait
# on one that the kernel cannot end (uninterruptible I/O), which is then left behind
_JOIN_S = 10.0


def pool_map(
    fn: Callable,
    jobs: Sequence[tuple],
    workers: int | None,
    on_result: Callable[[int, object], None],
    on_error: Callable[[int, Exception], Exception] | None = None,
) -> bool:
    """fn(*job) for every job in worker processes; on_result(i, value) as each one finishes.
    A failing job raises (on_error(i, exc) when given, to name the job). Returns True when
    Ctrl-C (KeyboardInterrupt) stopped it: the results already handed over are kept, the
    rest cancelled and the workers killed (not waited for).

    A worker that dies (SIGKILL, the OOM killer, an initializer that fails) breaks its pool:
    the jobs not finished run again in a new one. After `_BREAKS_BEFORE_ALONE` breaks in a
    row with no job finished the rest run one per pool, and a job whose lone worker dies
    raises WorkerDied (through on_error) naming it."""
    left = list(range(len(jobs)))
    workers = max(1, workers or os.cpu_count() or 1)
    breaks = 0  # in a row, with no job finished
    pool = None
    try:
        while left:
            alone = breaks >= _BREAKS_BEFORE_ALONE
            batch = left[:1] if alone else left
            pool = ProcessPoolExecutor(min(workers, len(batch)), initializer=_worker_init)
            finished, broken = _collect(pool, fn, jobs, batch, on_result, on_error)
            left = [i for i in left if i not in finished]
            if broken is None:
                pool.shutdown()
                pool = None
                continue
            exits = _stop(pool, broken=True)
            pool = None
            if alone:
                exc = WorkerDied(f"its worker process died before it finished ({_died(exits)})")
                named = on_error(batch[0], exc) if on_error is not None else exc
                raise named from broken
            breaks = 0 if finished else breaks + 1
            log.warning(
                "a worker process died (%s): running the %d unfinished job(s) again",
                _died(exits),
                len(left),
            )
    except KeyboardInterrupt:
        _stop(pool)
        return True
    except BaseException:
        _stop(pool)
        raise
    return False


def _collect(pool, fn, jobs, batch, on_result, on_error):
    """Run `batch` on `pool`: (the jobs that finished, the BrokenProcessPool if a worker
    died)."""
    futures = {}
    broken = None
    for i in batch:
        try:
            futures[pool.submit(fn, *jobs[i])] = i
        except BrokenProcessPool as exc:  # a worker died while the others were being sent
            broken = exc
            break
    finished: set[int] = set()
    pending = set(futures)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for f in done:
            i = futures[f]
            try:
                value = f.result()
            except BrokenProcessPool as exc:
                broken = exc
                continue
            except Exception as exc:
                named = on_error(i, exc) if on_error is not None else exc
                if named is exc:
                    raise
                raise named from exc
            on_result(i, value)
            finished.add(i)
    return finished, broken


def _worker_init() -> None:
    """A worker leaves stopping to the sweep: Ctrl-C and a hang-up reach the whole process
    group, and the pool decides (it kills its workers); SIGTERM ends it as by default (a
    forked worker inherits its parent's Python handlers)."""
    for name in ("SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop(pool: ProcessPoolExecutor | None, broken: bool = False) -> list[int | None]:
    """Kill the pool's workers (what they were computing is lost: a point being written is a
    temporary folder, never read) and wait until they are gone; their exit codes. A broken
    pool has ended its workers itself (SIGTERM to those left): it is waited for first, so
    that the exit codes are read once it has reaped them (both reaping races to ECHILD)."""
    if pool is None:
        return []
    procs = list((getattr(pool, "_processes", None) or {}).values())
    if broken:
        pool.shutdown(wait=True, cancel_futures=True)
    exits = [p.exitcode for p in procs]  # before any kill of ours: how the dead ones ended
    for p in procs:
        with contextlib.suppress(Exception):
            if p.exitcode is None:
                p.kill()
    pool.shutdown(wait=True, cancel_futures=True)
    for p in procs:
        p.join(_JOIN_S)
    return exits


def _died(exits: list[int | None]) -> str:
    """How a broken pool's workers ended, for the message: the first that did not end by the
    pool's own SIGTERM (it terminates the others when one dies)."""
    ended = [c for c in exits if c is not None]
    code = next((c for c in ended if c != -signal.SIGTERM), ended[0] if ended else None)
    if code is None:
        return "exit status unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


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
