"""One point of a sweep: its parameters as a run, its cache key, its simulation, its folder.

A point is a flat dict of run parameters (`POINT_DEFAULTS`: the CLI's `run` options, by the
names a spec uses). Its key is the SHA-256 of its parameters, the trace's bytes and the
simulator's source (the `thundersim` package and its policies, named as in a checkout so that
a checkout and an installed wheel of the same source share a cache): a cached point is reused
until one of them changes. A finished point is a folder holding summary.json and the tables it
keeps, written whole or not at all: into a temporary folder beside it, then renamed into
place. Two writers of one point (two sweeps on one cache, or a sweep and the workers a killed
one left) both compute it; the first rename wins and the other keeps the winner's. A folder
that is not whole (`damaged`: a truncated summary.json, a missing table) is recomputed, and
the temporary folder a killed writer left is removed by the next sweep (`clean_temporaries`).
Local workers die with the sweep that started them (`die_with`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from functools import cache
from importlib.util import find_spec
from pathlib import Path

import pandas as pd

from thundersim.lab import data
from thundersim.metrics.results import current_umask
from thundersim.metrics.window import window_columns

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
TABLES = ("memory", "env_usage", "env_preps", "steps")  # what a point may keep


# ---- hashing -------------------------------------------------------------------------------------
# Modules that cannot change a simulated point (front ends, live mode, plotting): editing them
# keeps the cache.
_NOT_SIMULATION = (
    "thundersim/api.py",
    "thundersim/cli/",
    "thundersim/lab/",
    "thundersim/live/",
    "thundersim/traces/stats.py",
    "thundersim/traces/converters/",
)


def _package_dir(name: str) -> Path:
    return Path(find_spec(name).submodule_search_locations[0])


def _source_files() -> Iterator[tuple[str, Path]]:
    """(name as in a checkout, file) of the simulator's source, sorted: the thundersim package
    and the policies. An installed wheel nests policies/ and engine_adapters/ inside the
    package; they are named (policies) or left out (engine adapters: live only) as in a
    checkout."""
    package = _package_dir("thundersim")
    policies = _package_dir("thundersim.policies")
    nested = (package / "policies", package / "engine_adapters")
    for f in sorted(package.rglob("*.py")):
        if not any(folder in f.parents for folder in nested):
            yield f"thundersim/{f.relative_to(package).as_posix()}", f
    for f in sorted(policies.rglob("*.py")):
        yield f"policies/{f.relative_to(policies).as_posix()}", f


@cache
def code_hash() -> str:
    """The simulator's source: a point's result depends on it."""
    h = hashlib.sha256()
    for name, f in _source_files():
        if name.startswith(_NOT_SIMULATION):
            continue
        h.update(name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@cache
def _file_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def trace_file(trace: str) -> Path:
    """The file of a point's trace (thundersim.lab.data: the current directory, then the
    bundled traces); DataNotFound names where it looked."""
    return data.find(trace, "trace")


def point_key(point: dict, keep: Iterable[str] = ()) -> str:
    trace = point["trace"]
    trace_id = trace if trace.startswith("gen:") else _file_hash(str(trace_file(trace)))
    blob = json.dumps(
        {"point": point, "trace": trace_id, "code": code_hash(), "keep": sorted(keep)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ---- one point -------------------------------------------------------------------------------
_TRACES: dict[str, list] = {}  # per worker process


def programs_of(trace: str, path: str | Path | None = None) -> list:
    """A trace's programs: generated for "gen:WORKLOAD:N:SEED", else read from `path` (the
    resolved file) or the trace's own path."""
    if trace.startswith("gen:"):
        from thundersim.traces import workloads

        _, workload, n, seed = trace.split(":")
        return workloads.generate(workload, int(n), int(seed))
    from thundersim.traces.loader import load_trace

    return load_trace(path or trace_file(trace))


def load_programs(trace: str, path: str | Path | None = None) -> list:
    """programs_of, once per process (a worker runs many points of one trace)."""
    if trace not in _TRACES:
        _TRACES[trace] = programs_of(trace, path)
    return _TRACES[trace]


def build_point(point: dict):
    """(PolicyOptions, RunConfig) of a point (ValueError on anything invalid)."""
    from thundersim.sim.simulate import build_run

    p = point
    return build_run(
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


def simulate_point(point: dict, programs: list):
    """Simulate the point's policy and setup on these programs: the RunResult."""
    from thundersim.policies import make_policy
    from thundersim.sim.simulate import simulate

    options, config = build_point(point)
    return simulate(programs, make_policy(point["policy"], options), config, point["trace"])


def run_point(
    point: dict, keep: Iterable[str] = (), trace_path: str | None = None
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Simulate one point: (summary, kept tables)."""
    result = simulate_point(point, load_programs(point["trace"], trace_path))
    tables = {}
    for name in keep:
        frame = getattr(result, name)
        if frame is not None:
            tables[name] = frame
    return result.summary, tables


def run_and_store(
    point: dict,
    keep: list[str],
    folder: str,
    trace_path: str | None,
    owner_pid: int | None = None,
) -> dict:
    """Worker side: run, write the point's folder atomically, return its row. `trace_path`:
    the trace file as the sweep resolved it (workers need not share its current directory).
    `owner_pid`: the sweep's process on this machine; the worker dies with it."""
    if owner_pid is not None:
        die_with(owner_pid)
    summary, tables = run_point(point, keep, trace_path)
    store_point(Path(folder), point, summary, tables)
    return flat_row(point, summary)


def store_point(out: Path, point: dict, summary: dict, tables: dict[str, pd.DataFrame]) -> None:
    """The point's folder, whole or not at all: written to a temporary folder of its own,
    then renamed to `out`. If `out` is already there another writer finished the same point
    (same inputs, same result): theirs is kept and this one discarded."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp{_writer()}-", dir=out.parent))
    try:
        for name, frame in tables.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        stored = {"point": point, "summary": summary, "tables": sorted(tables)}
        (tmp / "summary.json").write_text(json.dumps(stored))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 -> what mkdir makes
        try:
            os.rename(tmp, out)  # a point is cached whole or not at all
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another writer's is there: keep it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- workers die with their sweep --------------------------------------------------------------
_WATCHING: tuple[int, int] | None = None  # (this process, the pid it dies with): once each


def die_with(owner_pid: int, poll_s: float = 0.5) -> None:
    """End this process when `owner_pid` (the sweep) ends, so that a killed sweep leaves no
    worker computing points for minutes. On Linux, when the owner is this process's parent,
    the kernel does it (prctl PR_SET_PDEATHSIG: SIGKILL the moment the parent dies); and
    everywhere a daemon thread checks every `poll_s` that the owner (by a changed parent, or
    by its pid) is still there."""
    global _WATCHING
    if (os.getpid(), owner_pid) == _WATCHING:  # a forked child inherits its parent's
        return
    _WATCHING = (os.getpid(), owner_pid)
    parent = os.getppid()
    if parent == owner_pid and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    threading.Thread(
        target=_watch, args=(owner_pid, parent, poll_s), daemon=True, name="die-with-sweep"
    ).start()
    if not _owner_alive(owner_pid, parent):  # it died before the watch began
        os._exit(1)


def _owner_alive(owner_pid: int, parent: int) -> bool:
    if parent == owner_pid:  # a dead parent is seen at once (a zombie still answers kill 0)
        return os.getppid() == parent
    return _alive(owner_pid)


def _watch(owner_pid: int, parent: int, poll_s: float) -> None:
    while _owner_alive(owner_pid, parent):
        time.sleep(poll_s)
    os._exit(1)  # nothing to clean: a point being written is a temporary folder, never read


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


# ---- a point's folder ------------------------------------------------------------------------
def read_table(folder: Path, name: str) -> pd.DataFrame | None:
    f = folder / f"{name}.parquet"
    return pd.read_parquet(f) if f.exists() else None


def read_point(folder: Path) -> tuple[dict, dict]:
    stored = json.loads((folder / "summary.json").read_text())
    return stored["point"], stored["summary"]


_ALWAYS = ("memory", "steps")  # tables every run has (env_* only with a tool manager)


def damaged(folder: Path, keep: Iterable[str]) -> str | None:
    """Why a point's folder is not whole (unreadable summary.json, a table missing or
    truncated), or None when it is. A folder written before summary.json listed its tables
    must have the kept tables every run has, and the others it holds must read."""
    import pyarrow.parquet as pq

    try:
        stored = json.loads((folder / "summary.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"summary.json: {exc}"
    if not isinstance(stored, dict) or not all(
        isinstance(stored.get(k), dict) for k in ("point", "summary")
    ):
        return "summary.json: no point and summary"
    tables = stored.get("tables")
    if tables is None:  # written before the list
        tables = [t for t in keep if t in _ALWAYS or (folder / f"{t}.parquet").exists()]
    for name in tables:
        try:
            pq.read_metadata(folder / f"{name}.parquet")
        except (OSError, ValueError) as exc:  # missing, or truncated (no footer)
            return f"{name}.parquet: {exc}"
    return None


def discard(folder: Path) -> None:
    """Remove a damaged point's folder: renamed away first (a writer may be renaming a whole
    one into its place), then deleted."""
    aside = folder.with_name(f"{folder.name}.bad{_writer()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return  # someone else removed it
    shutil.rmtree(aside, ignore_errors=True)


# ---- what killed writers leave -----------------------------------------------------------------
# A temporary's name: KEY.tmpPID@HOST-RANDOM (store_point) or KEY.badPID@HOST-NS (discard);
# folders of older versions have no @HOST.
_TEMPORARY = re.compile(r"^[^.]+\.(?:tmp|bad)(?P<pid>\d+)(?:@(?P<host>.*))?-[^-]*$")
# provenance: estimate — a point's temporary lives while its folder is written (seconds: the
# simulation runs before it is made); one an hour old has lost its writer, on any host
STALE_S = 3600.0


def _writer() -> str:
    """PID@HOST: who writes a temporary, so that a sweep can tell one whose writer is gone."""
    return f"{os.getpid()}@{socket.gethostname()}"


def clean_temporaries(cache: Path, now: float | None = None) -> list[Path]:
    """Remove the temporaries killed writers left in `cache` (never read as entries: they are
    not named by a key): those whose writer, on this host, is gone, and any older than
    STALE_S (a writer on another host sharing the cache cannot be asked). The removed ones."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    removed = []
    try:
        names = os.listdir(cache)
    except OSError:  # no cache yet
        return removed
    for name in names:
        m = _TEMPORARY.match(name)
        if m is None:
            continue
        f = cache / name
        try:
            age = now - f.lstat().st_mtime
        except OSError:
            continue  # its writer finished (renamed it) or another sweep removed it
        gone = m["host"] == host and not _alive(int(m["pid"]))
        if gone or age > STALE_S:
            shutil.rmtree(f, ignore_errors=True)
            removed.append(f)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or no such pid at all)
        return False
    except PermissionError:  # someone else's
        return True
    return True
