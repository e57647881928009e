"""Declarative sweeps: one TOML spec per figure or table, a grid of simulated runs, each point
cached by the hash of its inputs, run on local processes or a Ray cluster, gathered as one table.

A spec (experiments/specs/*.toml):

    name = "fig4a"
    title = "..."
    kind = "line"                      # how `thundersim figures` draws it
    [base]                             # parameters every point shares (POINT_DEFAULTS)
    trace = "traces/swe.jsonl"
    [grid]                             # lists; the grid is their product
    policy = ["vllm", "continuum", "stp"]
    concurrency = [24, 48, 72, 96]
    [reduced]                          # replaces grid lists for the CI-sized run
    concurrency = [24, 96]

A spec is found by path or by name (thundersim.lab.data: the current directory first, then the
specs installed with thundersim), and so is its trace. Each point is cached by its key
(thundersim.lab.points: its parameters, the trace's bytes, the simulator's source), so an
interrupted sweep resumes where it stopped; a damaged entry is recomputed (with a warning),
a killed writer's temporary is removed, a worker that dies has its points run again (a point
that kills every worker it gets stops the sweep, named), and sweeps sharing a cache (or a
rerun while a killed sweep's workers finish) keep the first copy of a point written. Like
compare.py this module composes the parts; nothing in the core imports it.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import pandas as pd

from thundersim.lab import data
from thundersim.lab.points import (
    POINT_DEFAULTS,
    TABLES,
    clean_temporaries,
    damaged,
    discard,
    flat_row,
    point_key,
    read_point,
    run_and_store,
    trace_file,
)
from thundersim.traces.schema import TraceError

log = logging.getLogger(__name__)


class SpecError(ValueError):
    """A spec that cannot run: the message names the file and the field."""


@dataclass
class Spec:
    path: Path
    name: str
    title: str
    kind: str
    base: dict
    grid: dict[str, list]
    reduced: dict[str, list]
    keep: list[str]  # tables each point keeps beside its summary (for timelines)
    raw: dict = field(repr=False, default_factory=dict)  # everything else (plot, paper)

    def points(self, reduced: bool = False) -> list[dict]:
        grid = dict(self.grid)
        if reduced:
            grid.update(self.reduced)
        keys = list(grid)
        return [
            {**POINT_DEFAULTS, **self.base, **dict(zip(keys, values, strict=True))}
            for values in product(*(grid[k] for k in keys))
        ]


def load_spec(path: str | Path) -> Spec:
    """A spec by path or by name (`fig4a`), found as thundersim.lab.data finds it."""
    try:
        path = data.find_spec_file(path)
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, data.DataNotFound) as exc:
        raise SpecError(f"{path}: {exc}") from None
    for key in ("name", "kind"):
        if not isinstance(raw.get(key), str):
            raise SpecError(f"{path}: field {key!r} must be a string")
    sections = {name: raw.get(name, {}) for name in ("base", "grid", "reduced")}
    for section, table in sections.items():
        _check_section(path, section, table)
    keep = raw.get("keep", [])
    bad = [t for t in keep if t not in TABLES]
    if bad:
        raise SpecError(f"{path}: keep {bad} not in {', '.join(TABLES)}")
    return Spec(
        path=path,
        name=raw["name"],
        title=raw.get("title", raw["name"]),
        kind=raw["kind"],
        **sections,
        keep=list(keep),
        raw=raw,
    )


def _check_section(path: Path, section: str, table) -> None:
    if not isinstance(table, dict):
        raise SpecError(f"{path}: [{section}] must be a table")
    for key, value in table.items():
        if key not in POINT_DEFAULTS:
            raise SpecError(
                f"{path}: [{section}] {key!r} is not a run parameter; valid: "
                f"{', '.join(POINT_DEFAULTS)}"
            )
        if section != "base" and (not isinstance(value, list) or not value):
            raise SpecError(f"{path}: [{section}] {key!r} must be a non-empty list")


# ---- the sweep -------------------------------------------------------------------------------
@dataclass
class SweepResult:
    table: pd.DataFrame
    folders: list[Path]  # one per point, in grid order (cached summaries and tables)
    ran: int
    cached: int
    interrupted: bool
    ran_folders: set = field(default_factory=set)  # the points this call simulated


def run_sweep(
    spec: Spec,
    cache_dir: Path,
    reduced: bool = False,
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    on_done: Callable[[], None] | None = None,
) -> SweepResult:
    """Run every point not yet cached; gather all as one table (grid order)."""
    (result,) = run_sweeps([spec], cache_dir, reduced, executor, workers, ray_address, on_done)
    return result


def run_sweeps(
    specs: list[Spec],
    cache_dir: Path,
    reduced: bool = False,
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    on_done: Callable[[], None] | None = None,
) -> list[SweepResult]:
    """Several specs at once: their points are pooled (a point two specs share runs once) so
    every worker stays busy; one SweepResult per spec."""
    if executor not in ("local", "ray"):
        raise SpecError(f"unknown executor {executor!r}; valid: local, ray")
    for stale in clean_temporaries(cache_dir):
        log.info("removed %s, a temporary its killed writer left", stale)
    per_spec, unique = _plan(specs, cache_dir, reduced)
    todo = [f for f in unique if not _cached(f, unique[f][1])]
    for _ in range(len(unique) - len(todo)):
        if on_done:
            on_done()
    interrupted = False
    if todo:
        jobs = [(*unique[f], str(f), _trace_arg(unique[f][0])) for f in todo]
        run = _run_ray if executor == "ray" else _run_local
        interrupted = run(jobs, workers, ray_address, on_done)
    ran = set(todo)
    return [
        _gather(points, folders, ran, interrupted, spec.keep)
        for spec, (points, folders) in zip(specs, per_spec, strict=True)
    ]


def _cached(folder: Path, keep: list[str]) -> bool:
    """Whether the point is in the cache, whole; a damaged entry is removed (and rerun)."""
    if not os.path.lexists(folder):
        return False
    why = damaged(folder, keep)
    if why is None:
        return True
    log.warning("cache entry %s is damaged (%s): recomputing it", folder, why)
    discard(folder)
    return False


def _plan(specs: list[Spec], cache_dir: Path, reduced: bool):
    """Each spec's (points, folders), and the distinct folders to fill: folder -> (point,
    keep). Fails before anything runs on a trace that is not there, naming the spec."""
    per_spec = []
    unique: dict[Path, tuple[dict, list[str]]] = {}
    for spec in specs:
        points = spec.points(reduced)
        try:
            folders = [cache_dir / point_key(p, spec.keep) for p in points]
        except data.DataNotFound as exc:
            raise SpecError(f"{spec.path}: {exc}") from None
        per_spec.append((points, folders))
        for p, f in zip(points, folders, strict=True):
            unique.setdefault(f, (p, spec.keep))
    return per_spec, unique


def _trace_arg(point: dict) -> str | None:
    """The trace file a worker reads, resolved here: a worker need not share this process's
    current directory (a Ray worker does not)."""
    return None if point["trace"].startswith("gen:") else str(trace_file(point["trace"]))


def _gather(
    points: list[dict], folders: list[Path], ran: set, interrupted: bool, keep: list[str]
) -> SweepResult:
    rows = [
        flat_row(p, read_point(f)[1])
        for p, f in zip(points, folders, strict=True)
        if (f / "summary.json").exists() and damaged(f, keep) is None
    ]
    mine = {f for f in folders if f in ran}
    return SweepResult(
        pd.DataFrame(rows), folders, len(mine), len(folders) - len(mine), interrupted, mine
    )


def _run_local(jobs: list[tuple], workers, _address, on_done) -> bool:
    from thundersim.lab.compare import WorkerDied, pool_map

    def done(_i: int, _row: dict) -> None:
        if on_done:
            on_done()

    def name(i: int, exc: Exception) -> Exception:
        if isinstance(exc, ValueError | TraceError):
            return SpecError(f"point {jobs[i][0]}: {exc}")
        if isinstance(exc, WorkerDied):
            return SpecError(
                f"point {jobs[i][0]}: {exc}; the points finished before it are kept in the cache"
            )
        return exc

    # the workers die with this process (a killed sweep leaves none writing to the cache)
    owned = [(*job, os.getpid()) for job in jobs]
    return pool_map(run_and_store, owned, workers, done, name)


def _run_ray(jobs: list[tuple], workers, address, on_done) -> bool:
    """The same points as Ray tasks (`pip install thundersim[ray]`); workers share the cache
    folder and read the trace at the path resolved here, so on a multi-node cluster both must
    be on a shared file system."""
    try:
        import ray
    except ImportError:
        raise SpecError("--executor ray needs Ray: pip install 'thundersim[ray]'") from None
    started = not ray.is_initialized()
    if started:
        kwargs = {"address": address} if address else {"num_cpus": workers or os.cpu_count()}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    try:
        task = ray.remote(run_and_store)
        pending = [task.remote(*job) for job in jobs]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    ray.get(ref)  # raises a failed point's error here
                    if on_done:
                        on_done()
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            return True
    finally:
        if started:
            ray.shutdown()
    return False
