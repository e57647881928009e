"""Declarative sweeps: one TOML spec per figure or table, a grid of simulated runs, each point
cached by the hash of its inputs, run on local processes or a Ray cluster, gathered as one table.

A spec (experiments/specs/*.toml):

    name = "fig4a"
    title = "..."
    kind = "line"                      # how `thundersim figures` draws it
    [base]                             # parameters every point shares (see POINT_DEFAULTS)
    trace = "traces/swe.jsonl"
    [grid]                             # lists; the grid is their product
    policy = ["vllm", "continuum", "stp"]
    concurrency = [24, 48, 72, 96]
    [reduced]                          # replaces grid lists for the CI-sized run
    concurrency = [24, 96]

A point's key is the SHA-256 of its parameters, the trace's bytes and the simulator's source
(thundersim/ and policies/): a cached point is reused until one of them changes, and an
interrupted sweep resumes where it stopped. Like compare.py this module composes the parts (it
builds policies by name); nothing in the core imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from itertools import product
from pathlib import Path

import pandas as pd

from thundersim.metrics.window import window_columns
from thundersim.traces.schema import TraceError

ROOT = Path(__file__).resolve().parents[2]  # the checkout: thundersim/lab/sweep.py

# Every parameter a point may set, with its default (the CLI's `run` defaults).
POINT_DEFAULTS: dict = {
    "trace": "traces/swe.jsonl",  # a path, or "gen:WORKLOAD:PROGRAMS:SEED"
    "policy": "stp",
    "router": "least_loaded",
    "params": [],  # policy parameters, "key=value"
    "concurrency": 96,  # 0: open loop
    "replicas": 1,
    "gpu": "H100-SXM",
    "model": "GLM-4.6",
    "tp": 8,
    "weight_dtype": "fp8",
    "kv_dtype": "fp8",
    "kv_tokens": 0,
    "horizon": 0.0,  # > 0: a horizon run (steady window [warmup, horizon]); 0: run to the end
    "warmup": -1.0,  # seconds; -1: a quarter of the horizon (thundersim.metrics.window)
    "seed": 0,
    "dt": 5.0,
    "decay": "pow:2",
    "sample_dt": 1.0,
    "tool_manager": "gc+prefetch",
    "env_disk_gb": 0.0,
}
TABLES = ("memory", "env_usage", "env_preps", "steps")


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
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: {exc}") from None
    for key in ("name", "kind"):
        if not isinstance(raw.get(key), str):
            raise SpecError(f"{path}: field {key!r} must be a string")
    base = raw.get("base", {})
    grid = raw.get("grid", {})
    reduced = raw.get("reduced", {})
    for section, table in (("base", base), ("grid", grid), ("reduced", reduced)):
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
    keep = raw.get("keep", [])
    bad = [t for t in keep if t not in TABLES]
    if bad:
        raise SpecError(f"{path}: keep {bad} not in {', '.join(TABLES)}")
    return Spec(
        path=path,
        name=raw["name"],
        title=raw.get("title", raw["name"]),
        kind=raw["kind"],
        base=base,
        grid=grid,
        reduced=reduced,
        keep=list(keep),
        raw=raw,
    )


# ---- hashing -------------------------------------------------------------------------------------
# Modules that cannot change a simulated point (front ends, live mode, plotting): editing them
# keeps the cache.
_NOT_SIMULATION = (
    "thundersim/cli.py",
    "thundersim/lab/",
    "thundersim/live/",
    "thundersim/traces/stats.py",
    "thundersim/traces/converters/",
)


@cache
def code_hash() -> str:
    """The simulator's source: a point's result depends on it."""
    h = hashlib.sha256()
    for folder in ("thundersim", "policies"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = str(f.relative_to(ROOT))
            if rel.startswith(_NOT_SIMULATION):
                continue
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@cache
def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def point_key(point: dict, keep: Iterable[str] = ()) -> str:
    trace = point["trace"]
    trace_id = trace if trace.startswith("gen:") else _file_hash(_trace_path(trace))
    blob = json.dumps(
        {"point": point, "trace": trace_id, "code": code_hash(), "keep": sorted(keep)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _trace_path(trace: str) -> str:
    p = Path(trace)
    return str(p if p.is_absolute() else ROOT / p)


# ---- one point -------------------------------------------------------------------------------
_TRACES: dict[str, list] = {}  # per worker process


def _load(trace: str):
    specs = _TRACES.get(trace)
    if specs is None:
        if trace.startswith("gen:"):
            from thundersim.traces import workloads

            _, workload, n, seed = trace.split(":")
            specs = workloads.generate(workload, int(n), int(seed))
        else:
            from thundersim.traces.loader import load_trace

            specs = load_trace(_trace_path(trace))
        _TRACES[trace] = specs
    return specs


def run_point(point: dict, keep: Iterable[str] = ()) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Simulate one point: (summary, kept tables)."""
    from thundersim.policies import make_policy
    from thundersim.sim.simulate import build_run, simulate

    p = point
    options, config = build_run(
        router=p["router"],
        params=list(p["params"]),
        dt=p["dt"],
        decay=p["decay"],
        seed=p["seed"],
        gpu=p["gpu"],
        model=p["model"],
        tp=p["tp"],
        weight_dtype=p["weight_dtype"],
        kv_dtype=p["kv_dtype"],
        kv_tokens=p["kv_tokens"],
        latency_profile=None,
        replicas=p["replicas"],
        concurrency=p["concurrency"] or None,
        horizon_s=p["horizon"] or None,
        warmup_s=None if p["warmup"] < 0 else p["warmup"],
        sample_dt=p["sample_dt"],
        tool_manager=p["tool_manager"] if p["tool_manager"] != "off" else None,
        env_disk_limit=int(p["env_disk_gb"] * 1e9) or None,
    )
    result = simulate(_load(p["trace"]), make_policy(p["policy"], options), config, p["trace"])
    tables = {}
    for name in keep:
        frame = getattr(result, name)
        if frame is not None:
            tables[name] = frame
    return result.summary, tables


def _run_and_store(point: dict, keep: list[str], folder: str) -> dict:
    """Worker side: run, write the point's folder atomically, return its row."""
    summary, tables = run_point(point, keep)
    out = Path(folder)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_parquet(tmp / f"{name}.parquet", index=False)
    (tmp / "summary.json").write_text(json.dumps({"point": point, "summary": summary}))
    tmp.rename(out)  # a point is cached whole or not at all
    return flat_row(point, summary)


def flat_row(point: dict, summary: dict) -> dict:
    """The table row of a point: its varying inputs, then every scalar of its summary."""
    row = {k: (",".join(v) if isinstance(v, list) else v) for k, v in point.items()}
    for k, v in summary.items():
        if isinstance(v, int | float | str | bool) or v is None:
            row.setdefault(k, v)
        elif isinstance(v, dict) and k in (
            "env",
            "stp_cost",
            "step_breakdown_mean_s",
            "stp_unused_bound",
        ):
            for kk, vv in v.items():
                if isinstance(vv, int | float | str | bool) or vv is None:
                    row[f"{k}.{kk}"] = vv
    if summary.get("throughput_window_s"):  # the window its throughput was measured over
        row.update(window_columns(summary))
    b = summary.get("step_breakdown_mean_s") or {}
    parts = [b.get(k) for k in ("hold_s", "queue_s", "prefill_s", "decode_s")]
    # per-step LLM latency: from the call being ready to its last token (the tool excluded)
    row["step_latency_s"] = sum(parts) if all(v is not None for v in parts) else None
    return row


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
    per_spec = []
    unique: dict[Path, tuple[dict, list[str]]] = {}
    for spec in specs:
        points = spec.points(reduced)
        for p in points:  # fail before anything runs, naming the spec
            if not p["trace"].startswith("gen:") and not Path(_trace_path(p["trace"])).exists():
                raise SpecError(f"{spec.path}: trace {p['trace']!r} does not exist")
        folders = [cache_dir / point_key(p, spec.keep) for p in points]
        per_spec.append((points, folders))
        for p, f in zip(points, folders, strict=True):
            unique.setdefault(f, (p, spec.keep))
    todo_folders = [f for f in unique if not (f / "summary.json").exists()]
    cached = {f for f in unique if f not in set(todo_folders)}
    for _ in cached:
        if on_done:
            on_done()
    interrupted = False
    if todo_folders:
        points = [unique[f][0] for f in todo_folders]
        keeps = [unique[f][1] for f in todo_folders]
        run = _run_ray if executor == "ray" else _run_local
        rows: dict[int, dict] = {}
        interrupted = run(points, todo_folders, keeps, rows, workers, ray_address, on_done)
    results = []
    for points, folders in per_spec:
        rows = [
            flat_row(p, read_point(f)[1])
            for p, f in zip(points, folders, strict=True)
            if (f / "summary.json").exists()
        ]
        ran = {f for f in folders if f in set(todo_folders)}
        results.append(
            SweepResult(
                pd.DataFrame(rows), folders, len(ran), len(folders) - len(ran), interrupted, ran
            )
        )
    return results


def _run_local(points, folders, keeps, rows, workers, _address, on_done) -> bool:
    from thundersim.lab.compare import pool_map

    def keep(i: int, row: dict) -> None:
        rows[i] = row
        if on_done:
            on_done()

    def name(i: int, exc: Exception) -> Exception:
        if isinstance(exc, ValueError | TraceError):
            return SpecError(f"point {points[i]}: {exc}")
        return exc

    jobs = [(p, k, str(f)) for p, k, f in zip(points, keeps, folders, strict=True)]
    return pool_map(_run_and_store, jobs, workers, keep, name)


def _run_ray(points, folders, keeps, rows, workers, address, on_done) -> bool:
    """The same points as Ray tasks (`pip install thundersim[ray]`); workers share the cache
    folder, so on a multi-node cluster it must be a shared file system."""
    try:
        import ray
    except ImportError:
        raise SpecError("--executor ray needs Ray: pip install 'thundersim[ray]'") from None
    started = not ray.is_initialized()
    if started:
        kwargs = {"address": address} if address else {"num_cpus": workers or os.cpu_count()}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    try:
        task = ray.remote(_run_and_store)
        refs = {
            task.remote(p, k, str(f)): i
            for i, (p, k, f) in enumerate(zip(points, keeps, folders, strict=True))
        }
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    rows[refs[ref]] = ray.get(ref)
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


def read_table(folder: Path, name: str) -> pd.DataFrame | None:
    f = folder / f"{name}.parquet"
    return pd.read_parquet(f) if f.exists() else None


def read_point(folder: Path) -> tuple[dict, dict]:
    data = json.loads((folder / "summary.json").read_text())
    return data["point"], data["summary"]
