"""`thundersim figures`: every figure and table of the paper from its spec, beside the paper's
numbers, and figures/REPORT.md.

Results are tables first: each spec's sweep table is written to figures/data/NAME.csv, then
drawn with matplotlib (PNG and PDF, thundersim.lab.draw), then compared with the spec's [paper]
numbers. The report's reading of each figure is computed from those numbers (ratios, whether
the policies come in the paper's order), followed by the spec's note on known modelling gaps
(thundersim.lab.report). The specs are those of the current directory's experiments/specs, or
the ones installed with thundersim (thundersim.lab.data).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from thundersim.lab import data
from thundersim.lab.draw import DRAW, use_style
from thundersim.lab.report import FigureResult, read_comparisons, write_report
from thundersim.lab.sweep import Spec, SweepResult, load_spec, run_sweeps
from thundersim.metrics.window import STEADY, check_table

SIM_KINDS = ("line", "timeline", "disk", "prep", "breakdown", "table")


def specs_in(folder: Path | None = None, only: list[str] | None = None) -> list[Spec]:
    """The specs of a folder (default: thundersim.lab.data's spec folder), or only the named."""
    folder = data.spec_dir() if folder is None else folder
    specs = [load_spec(p) for p in sorted(Path(folder).glob("*.toml"))]
    if only:
        names = {s.name for s in specs}
        missing = [n for n in only if n not in names]
        if missing:
            raise ValueError(f"no spec named {', '.join(missing)}; have {', '.join(sorted(names))}")
        specs = [s for s in specs if s.name in only]
    return specs


# ---- the command ----------------------------------------------------------------------------
def regenerate(
    out: Path,
    cache_dir: Path,
    only: list[str] | None = None,
    reduced: bool = False,
    executor: str = "local",
    workers: int | None = None,
    on_done: Callable[[], None] | None = None,
    spec_dir: Path | None = None,
) -> tuple[list[FigureResult], dict]:
    """Sweep every simulated spec (cached points reused), draw every figure into `out`, write
    its table to out/data and the report beside them; (the figures, timing)."""
    t0 = time.perf_counter()
    specs = specs_in(spec_dir, only)
    sim_specs = [s for s in specs if s.kind in SIM_KINDS]
    sweeps = run_sweeps(sim_specs, cache_dir, reduced, executor, workers, on_done=on_done)
    by_name: dict[str, SweepResult] = {s.name: r for s, r in zip(sim_specs, sweeps, strict=True)}
    t_sim = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    use_style()
    results = []
    for spec in specs:
        res = FigureResult(spec)
        sweep = by_name.get(spec.name)
        if sweep is not None:
            res.measured = _check_one_definition(spec, sweep.table)
            sweep.table.to_csv(out / "data" / f"{spec.name}.csv", index=False)
        DRAW[spec.kind](spec, sweep, res, out)
        read_comparisons(res)
        results.append(res)
    timing = {
        "simulate_s": t_sim,
        "total_s": time.perf_counter() - t0,
        # distinct points: a point two specs share is one run
        "points_run": len(set().union(*(r.ran_folders for r in sweeps))),
        "points_cached": len(
            {f for r in sweeps for f in r.folders} - set().union(*(r.ran_folders for r in sweeps))
        ),
        "reduced": reduced,
    }
    # the full report only from a full run; --only and --reduced write their own
    name = "REPORT-reduced.md" if reduced else "REPORT-partial.md" if only else "REPORT.md"
    write_report(results, out / name, timing)
    return results, timing


def _check_one_definition(spec: Spec, table: pd.DataFrame) -> str:
    """A figure puts its points side by side: their throughput must be one kind, and a steady
    one over one window (thundersim.metrics.window)."""
    if table.empty or "throughput_metric" not in table:
        return ""
    kind = check_table(table.to_dict("records"), f"{spec.path.name}: the points of {spec.name}")
    if kind[0] == STEADY:
        return (
            f"Throughput of every point: steps completed in [{kind[1]:,.0f}, {kind[2]:,.0f}] s "
            "of a closed loop that recycles the trace (never drains), per minute."
        )
    return "Throughput of every point: all its steps / its makespan (each trace run to its end)."
