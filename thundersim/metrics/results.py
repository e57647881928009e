"""The result of a run, simulated or live: its tables (steps, programs, memory, environments)
and its summary, computed one way for both clocks."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where tables are built, not at start-up
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
        """The run's folder, whole: written beside `out`, then renamed into place
        (replacing_folder), so `out` never holds part of a run or parts of two."""
        with replacing_folder(Path(out)) as tmp:
            self.write_into(tmp)

    def write_into(self, folder: Path) -> None:
        """The tables and summary.json into an existing folder, as they come (not atomic)."""
        frames = {"steps": self.steps, "programs": self.programs, "memory": self.memory}
        if self.env_usage is not None:
            frames["env_usage"] = self.env_usage
            frames["env_preps"] = self.env_preps
        write_tables(folder, self.summary, frames)


# ---- a run's folder, whole or not at all -------------------------------------------------------
# What a run's folder holds; a folder holding anything else is not replaced (it is not a run's).
RUN_FILES = ("summary.json", "steps.jsonl")
_TMP, _OLD = ".tmp-", ".old-"


def check_replaceable(out: Path) -> None:
    """ValueError unless `out` is absent, empty or a run's folder (only RUN_FILES and
    *.parquet): replacing it must not delete anything that is not a run's."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    other = sorted(
        f.name
        for f in out.iterdir()
        if not (f.is_file() and (f.name in RUN_FILES or f.suffix == ".parquet"))
    )
    if other:
        shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
        raise ValueError(
            f"{out} holds files that are not a run's ({shown}); a run replaces its --out "
            "folder whole: choose a new or empty folder, or a previous run's"
        )


@contextlib.contextmanager
def replacing_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` to write a run into; on a clean exit it is renamed to
    `out`, replacing the previous run's folder only once the new one is whole. On an
    exception (or a kill) the temporary folder goes (or stays as `.NAME.tmp-*`, never read)
    and `out` is untouched. Between the two renames that replace an existing folder, `out`
    is briefly absent: a reader sees the old run, no run, or the new run, never a mix."""
    out = Path(os.path.abspath(out))
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_TMP}{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 -> what mkdir would have made
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def current_umask() -> int:
    """The process's umask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; a previous folder at `out` is first moved aside (whole), then
    removed. Another writer may put its own folder at `out` in between: then again."""
    for _ in range(10):
        try:
            os.rename(tmp, out)  # replaces an absent or empty folder, not a full one
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        check_replaceable(out)
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}{_OLD}{os.getpid()}-", dir=out.parent))
        try:
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile
                os.rename(out, old / "run")
            try:
                os.rename(tmp, out)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    with contextlib.suppress(OSError):
                        os.rename(old / "run", out)  # put the previous run back
                    raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    raise OSError(errno.EBUSY, f"{out}: other writers keep replacing it")


def _remove_stale(out: Path) -> None:
    """Temporary and replaced folders of `out` left by a killed writer (its pid gone)."""
    for prefix in (f".{out.name}{_TMP}", f".{out.name}{_OLD}"):
        for f in out.parent.glob(f"{prefix}*"):
            pid = f.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(f, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        # calls that ended without an answer (refused, failed, withdrawn): not steps
        "calls_failed": recorder.failed_calls,
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
