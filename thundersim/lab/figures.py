"""`thundersim figures`: every figure and table of the paper from its spec, beside the paper's
numbers, and figures/REPORT.md.

Results are tables first: each spec's sweep table is written to figures/data/NAME.csv, then
drawn with matplotlib (PNG and PDF), then compared with the spec's [paper] numbers. The report's
reading of each figure is computed from those numbers (ratios, whether the policies come in the
paper's order), followed by the spec's note on known modelling gaps.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from thundersim.lab.provenance import fitted_specs  # noqa: E402
from thundersim.lab.readings import report_reading  # noqa: E402
from thundersim.lab.sweep import ROOT, Spec, SweepResult, load_spec, read_table, run_sweeps  # noqa: E402
from thundersim.metrics.window import STEADY, check_table  # noqa: E402

SPEC_DIR = ROOT / "experiments" / "specs"
SIM_KINDS = ("line", "timeline", "disk", "prep", "breakdown", "table")

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # editable text in the PDF
}
METRIC_LABELS = {
    "throughput_steps_per_min": "throughput (steps/min)",
    "kv_hit_rate": "KV hit rate",
    "step_latency_s": "per-step LLM latency (s)",
    "mem_imbalance_frac_over_20pct": "time with spread > 20 %",
    "mem_imbalance_peak": "peak spread",
    "env.peak_disk_bytes": "peak sandbox disk (bytes)",
    "prep_s": "env preparation (s)",
}


@dataclass
class Comparison:
    """One number of the paper beside the simulator's."""

    metric: str
    series: str
    x: object
    sim: float
    paper: float

    @property
    def ratio(self) -> float:
        if self.paper in (0, None) or _nan(self.paper) or _nan(self.sim):
            return math.nan
        return self.sim / self.paper


@dataclass
class FigureResult:
    spec: Spec
    files: list[Path] = field(default_factory=list)
    rows: list[Comparison] = field(default_factory=list)
    reading: list[str] = field(default_factory=list)
    table_md: str = ""
    measured: str = ""  # how this figure's throughput was measured (thundersim.metrics.window)


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def specs_in(folder: Path = SPEC_DIR, only: list[str] | None = None) -> list[Spec]:
    specs = [load_spec(p) for p in sorted(folder.glob("*.toml"))]
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
) -> tuple[list[FigureResult], dict]:
    t0 = time.perf_counter()
    specs = specs_in(SPEC_DIR, only)
    sim_specs = [s for s in specs if s.kind in SIM_KINDS]
    sweeps = run_sweeps(sim_specs, cache_dir, reduced, executor, workers, on_done=on_done)
    by_name: dict[str, SweepResult] = {s.name: r for s, r in zip(sim_specs, sweeps, strict=True)}
    t_sim = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    plt.rcParams.update(STYLE)
    results = []
    for spec in specs:
        res = FigureResult(spec)
        sweep = by_name.get(spec.name)
        if sweep is not None:
            res.measured = _check_one_definition(spec, sweep.table)
            sweep.table.to_csv(out / "data" / f"{spec.name}.csv", index=False)
        DRAW[spec.kind](spec, sweep, res, out)
        _read(res)
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


def _save(fig, res: FigureResult, out: Path, name: str | None = None) -> None:
    name = name or res.spec.name
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=200)
        res.files.append(path)
    plt.close(fig)


def _series(t: pd.DataFrame, key) -> pd.Series:
    """The series of each row: one grid key, or several joined with '/' (e.g. policy/tool)."""
    if isinstance(key, list):
        return t[key].astype(str).agg("/".join, axis=1)
    return t[key].astype(str)


def _label(spec: Spec, value) -> str:
    return str(spec.raw.get("plot", {}).get("labels", {}).get(str(value), value))


def _paper(spec: Spec, metric: str) -> dict:
    return spec.raw.get("paper", {}).get(metric, {})


def _xs(spec: Spec, key: str) -> list:
    return list(spec.grid.get(key, spec.base.get(key) and [spec.base[key]] or []))


# ---- kinds ----------------------------------------------------------------------------------
def draw_line(spec: Spec, sweep: SweepResult, res: FigureResult, out: Path) -> None:
    plot = spec.raw.get("plot", {})
    x_key, s_key = plot.get("x", "concurrency"), plot.get("series", "policy")
    metrics = plot.get("metrics", ["throughput_steps_per_min"])
    t = sweep.table
    full_xs = _xs(spec, x_key)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 2.4), squeeze=False)
    categorical = any(isinstance(x, str) for x in full_xs)
    pos = {x: i for i, x in enumerate(full_xs)} if categorical else None
    for ax, metric in zip(axes[0], metrics, strict=True):
        paper = _paper(spec, metric)
        for n, (series, group) in enumerate(t.groupby(s_key, sort=False)):
            group = group.sort_values(x_key, key=lambda c: c.map(pos) if pos else c)
            xs = [pos[x] for x in group[x_key]] if pos else group[x_key]
            line = ax.plot(xs, group[metric], marker="o", label=_label(spec, series))[0]
            values = paper.get(str(series))
            if isinstance(values, list):
                px = [pos[x] for x in full_xs] if pos else full_xs
                ax.plot(
                    px,
                    values,
                    ls="--",
                    marker="o",
                    mfc="none",
                    color=line.get_color(),
                    alpha=0.7,
                    label="paper (dashed, hollow)" if n == 0 else None,
                )
                for x, v in zip(full_xs, values, strict=False):
                    sim = group.loc[group[x_key] == x, metric]
                    if len(sim):
                        res.rows.append(Comparison(metric, str(series), x, float(sim.iloc[0]), v))
        if pos:
            ax.set_xticks(range(len(full_xs)), [str(x) for x in full_xs])
        ax.set_xlabel(x_key.replace("_", " "))
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    axes[0][0].legend(frameon=False)
    fig.suptitle(spec.title, fontsize=8, y=1.04)
    _save(fig, res, out)


def draw_timeline(spec: Spec, sweep: SweepResult, res: FigureResult, out: Path) -> None:
    plot = spec.raw.get("plot", {})
    s_key = plot.get("series", "policy")
    t = sweep.table
    fig, axes = plt.subplots(1, len(t), figsize=(3.3 * len(t), 2.4), squeeze=False, sharey=True)
    for ax, (i, row) in zip(axes[0], t.iterrows(), strict=True):
        mem = read_table(sweep.folders[i], "memory")
        if mem is None:
            continue
        cap = row.get("kv_capacity_tokens") or mem.capacity_tokens.max()
        for backend, m in mem.groupby("backend"):
            ax.plot(m.t / 60, m.used_tokens / cap, lw=0.8, label=f"replica {backend}")
        ax.set_title(_label(spec, row[s_key]))
        ax.set_xlabel("time (min)")
        ax.set_ylabel("KV used / capacity")
    axes[0][0].legend(frameon=False)
    fig.suptitle(spec.title, fontsize=8, y=1.04)
    _save(fig, res, out)
    _scalar_rows(spec, t, s_key, res)


def _scalar_rows(spec: Spec, t: pd.DataFrame, s_key, res: FigureResult, x=None) -> None:
    series = _series(t, s_key)
    for metric in spec.raw.get("plot", {}).get("metrics", []):
        paper = _paper(spec, metric)
        for (_, row), name in zip(t.iterrows(), series, strict=True):
            v = paper.get(name)
            if isinstance(v, list):
                v = v[0] if v else math.nan
            if isinstance(v, int | float):
                res.rows.append(Comparison(metric, name, x, float(row[metric]), v))


def draw_disk(spec: Spec, sweep: SweepResult, res: FigureResult, out: Path) -> None:
    s_key = spec.raw.get("plot", {}).get("series", "tool_manager")
    fig, ax = plt.subplots(figsize=(3.3, 2.4))
    crossing = {}
    for i, row in sweep.table.iterrows():
        use = read_table(sweep.folders[i], "env_usage")
        if use is None:
            continue
        ax.plot(use.finished, use.disk_bytes / 1e12, label=_label(spec, row[s_key]))
        over = use[use.disk_bytes >= 2e12]
        crossing[str(row[s_key])] = int(over.finished.iloc[0]) if len(over) else None
    ax.axhline(2.0, color="gray", ls=":", lw=1)
    ax.set_xlabel("workflows processed")
    ax.set_ylabel("sandbox disk (TB)")
    ax.legend(frameon=False)
    fig.suptitle(spec.title, fontsize=8, y=1.04)
    _save(fig, res, out)
    paper = _paper(spec, "disk").get("crosses_2tb_at_workflows")
    for series, at in sorted(crossing.items()):
        if paper is not None and at is not None:
            res.rows.append(Comparison("workflows when disk crosses 2 TB", series, None, at, paper))
        elif at is None:
            res.reading.append(f"`{series}` never crosses 2 TB in this run.")


def draw_prep(spec: Spec, sweep: SweepResult, res: FigureResult, out: Path) -> None:
    xs, first_wave = [], []
    for i, row in sweep.table.iterrows():
        preps = read_table(sweep.folders[i], "env_preps")
        n = int(row["concurrency"])
        wave = preps.sort_values("start_t").head(n)  # the run starts with n preparations at once
        xs.append(n)
        first_wave.append(float(wave.prep_s.mean()))
    paper = _paper(spec, "prep_s").get("values", [])
    fig, ax = plt.subplots(figsize=(3.3, 2.4))
    ax.plot(xs, first_wave, marker="o", label="simulator (first wave)")
    if paper:
        ax.plot(_xs(spec, "concurrency"), paper, ls="--", marker="o", mfc="none", label="paper")
    ax.set_xlabel("parallel workflows")
    ax.set_ylabel(METRIC_LABELS["prep_s"])
    ax.legend(frameon=False)
    fig.suptitle(spec.title, fontsize=8, y=1.04)
    _save(fig, res, out)
    for x, sim, p in zip(xs, first_wave, paper, strict=False):
        res.rows.append(Comparison("prep_s", "stp", x, sim, p))


BREAKDOWN = ("hold_s", "queue_s", "prefill_s", "decode_s", "tool_s", "prep_s")


def draw_breakdown(spec: Spec, sweep: SweepResult, res: FigureResult, out: Path) -> None:
    s_key = spec.raw.get("plot", {}).get("series", "policy")
    t = sweep.table
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(6.6, 2.4))
    labels = [_label(spec, v) for v in _series(t, s_key)]
    left = np.zeros(len(t))
    for part in BREAKDOWN:
        v = t[f"step_breakdown_mean_s.{part}"].fillna(0).to_numpy()
        ax.barh(labels, v, left=left, label=part.removesuffix("_s"))
        left += v
    ax.set_xlabel("mean seconds per step")
    ax.legend(frameon=False, ncol=3, fontsize=6)
    ax2.barh(labels, t["env.peak_disk_bytes"] / 1e12)
    ax2.set_xlabel("peak sandbox disk (TB)")
    ax2.set_yticklabels([])
    fig.suptitle(spec.title, fontsize=8, y=1.04)
    _save(fig, res, out)
    _scalar_rows(spec, t, s_key, res)


def draw_table(spec: Spec, sweep: SweepResult, res: FigureResult, out: Path) -> None:
    plot = spec.raw.get("plot", {})
    r_key, s_key = plot.get("rows", "trace"), plot.get("series", "policy")
    metrics = plot.get("metrics", ["throughput_steps_per_min"])
    t = sweep.table
    lines = [f"| {r_key} | {s_key} | " + " | ".join(metrics) + " |"]
    lines.append("|" + "---|" * (2 + len(metrics)))
    for _, row in t.iterrows():
        cells = [_fmt(row[m]) for m in metrics]
        lines.append(f"| {row[r_key]} | {_label(spec, row[s_key])} | " + " | ".join(cells) + " |")
    res.table_md = "\n".join(lines)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 2.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        pivot = t.pivot_table(index=r_key, columns=s_key, values=metric, sort=False)
        pivot.plot.bar(ax=ax, rot=0)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.legend(frameon=False)
    fig.suptitle(spec.title, fontsize=8, y=1.04)
    _save(fig, res, out)
    order = [str(v) for v in _xs(spec, r_key)]  # paper lists follow the full grid's rows
    row_labels = plot.get("row_labels", {})
    for metric in metrics:
        paper = _paper(spec, metric)
        for _, row in t.iterrows():
            values = paper.get(str(row[s_key]))
            where = str(row[r_key])
            if isinstance(values, list) and where in order and order.index(where) < len(values):
                v = values[order.index(where)]
                label = row_labels.get(where, where)
                res.rows.append(Comparison(metric, str(row[s_key]), label, float(row[metric]), v))


def draw_tool_cdf(spec: Spec, sweep, res: FigureResult, out: Path) -> None:
    from thundersim.lab.sweep import _load

    traces = spec.raw.get("traces", [])
    paper = _paper(spec, "tool_p95_p99")
    fig, axes = plt.subplots(1, len(traces), figsize=(2.6 * len(traces), 2.4), squeeze=False)
    for ax, path in zip(axes[0], traces, strict=True):
        by_tool: dict[str, list[float]] = {}
        for p in _load(path):  # a bundled trace, or gen:WORKLOAD:N:SEED for larger samples
            for s in p.steps:
                if s.tool:
                    by_tool.setdefault(s.tool, []).append(s.tool_s)
        for tool, v in sorted(by_tool.items()):
            v = np.sort(np.asarray(v))
            ax.plot(np.maximum(v, 1e-3), np.arange(1, len(v) + 1) / len(v), label=tool)
            where = spec.raw.get("paper", {}).get("tool_trace", {}).get(tool, path)
            if tool in paper and where == path:
                p95, p99 = paper[tool]
                res.rows.append(
                    Comparison("tool p95 (s)", tool, path, float(np.quantile(v, 0.95)), p95)
                )
                res.rows.append(
                    Comparison("tool p99 (s)", tool, path, float(np.quantile(v, 0.99)), p99)
                )
        ax.set_xscale("log")
        ax.set_title(Path(path).stem if not path.startswith("gen:") else path.split(":")[1])
        ax.set_xlabel("tool seconds")
        ax.legend(frameon=False, fontsize=6)
    axes[0][0].set_ylabel("CDF")
    fig.suptitle(spec.title, fontsize=8, y=1.04)
    _save(fig, res, out)


def draw_unsupported(spec: Spec, sweep, res: FigureResult, out: Path) -> None:
    res.reading.append("**Not regenerated.** " + spec.raw.get("reason", "").strip())


def draw_validation(spec: Spec, sweep, res: FigureResult, out: Path) -> None:
    source = ROOT / spec.raw.get("source", "")
    if not source.is_file():
        res.reading.append(
            f"No measurement yet: run `python experiments/bench_live_fidelity.py` (writes {source.name})."
        )
        return
    data = json.loads(source.read_text())
    records = data["records"] if isinstance(data, dict) else data
    t = pd.DataFrame(records)
    t = t[t.metric != "preemptions"]
    fig, ax = plt.subplots(figsize=(3.3, 2.4))
    short = {"throughput_steps_per_min": "tput (whole run)", "kv_hit_rate": "hit rate"}
    labels = [f"{r.policy}\n{short.get(r.metric, r.metric)}" for r in t.itertuples()]
    ax.bar(labels, 100 * t.rel_error)
    ax.axhline(15, color="gray", ls=":", lw=1)
    ax.axhline(-15, color="gray", ls=":", lw=1)
    ax.set_ylabel("sim vs live error (%)")
    fig.suptitle(spec.title, fontsize=8, y=1.04)
    _save(fig, res, out)
    res.table_md = "| policy | metric | sim | live | error |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {r['policy']} | {r['metric']} | {_fmt(r['sim'])} | {_fmt(r['live'])} | "
        f"{_fmt_pct(r['rel_error'])} |"
        for r in records
    )
    if isinstance(data, dict) and data.get("setup"):
        res.reading.append(f"Setup: {data['setup']}")


DRAW = {
    "line": draw_line,
    "timeline": draw_timeline,
    "disk": draw_disk,
    "prep": draw_prep,
    "breakdown": draw_breakdown,
    "table": draw_table,
    "tool_cdf": draw_tool_cdf,
    "unsupported": draw_unsupported,
    "validation": draw_validation,
}


# ---- reading and report -----------------------------------------------------------------------
def _read(res: FigureResult) -> None:
    """What the numbers say: mean ratio per series, and whether the series come in the paper's
    order at each x."""
    rows = [r for r in res.rows if not math.isnan(r.ratio)]
    if not rows:
        return
    by_series: dict[tuple, list[float]] = {}
    for r in rows:
        by_series.setdefault((r.metric, r.series), []).append(r.ratio)
    parts = [
        f"{s} {m.split('.')[-1]}: sim/paper {np.exp(np.mean(np.log(np.maximum(v, 1e-9)))):.2f}×"
        for (m, s), v in by_series.items()
    ]
    res.reading.append("Geometric-mean ratio — " + "; ".join(parts) + ".")
    if res.spec.kind not in ("line", "table"):
        return  # ordering means policies compared at one x
    by_x: dict[tuple, list[Comparison]] = {}
    for r in rows:
        by_x.setdefault((r.metric, str(r.x)), []).append(r)
    agree = total = 0
    for group in by_x.values():
        if len(group) < 2:
            continue
        sim_order = [r.series for r in sorted(group, key=lambda r: r.sim)]
        paper_order = [r.series for r in sorted(group, key=lambda r: r.paper)]
        total += 1
        agree += sim_order == paper_order
    if total:
        res.reading.append(
            f"Series ordered as in the paper at {agree} of {total} (metric, x) points."
        )


def _fmt(v) -> str:
    if _nan(v):
        return "—"
    if isinstance(v, str):
        return v
    v = float(v)
    if abs(v) >= 1e9:
        return f"{v / 1e12:.2f} T" if abs(v) >= 1e11 else f"{v / 1e9:.1f} G"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _fmt_pct(v) -> str:
    return "—" if _nan(v) else f"{100 * v:+.1f} %"


def write_report(results: list[FigureResult], path: Path, timing: dict) -> None:
    lines = [
        "# thundersim vs the paper",
        "",
        "Generated by `thundersim figures"
        + (" --reduced" if timing["reduced"] else "")
        + "`: every figure and table of ThunderAgent (arXiv 2602.13692) that the simulator can "
        "model, from the specs in `experiments/specs/`, with the paper's numbers (PAPER.md, ≈ read "
        "off its plots) beside ours. Every constant of the simulator carries its provenance "
        "(`docs/PROVENANCE.md`, `thundersim catalog --provenance`); a figure whose compared "
        "metric depends on a constant fitted to a number of the paper is marked a *consistency "
        "check*: agreement there shows the fit holds inside a run, not that the simulator "
        "predicts the paper, and it is not counted as a reproduction.",
        "",
        f"Simulated {timing['points_run']} points ({timing['points_cached']} from the cache) in "
        f"{timing['simulate_s']:.0f} s; whole command {timing['total_s']:.0f} s.",
        "",
    ]
    fitted = fitted_specs()
    compared = [r for r in results if r.rows]
    checks = [r.spec.name for r in compared if r.spec.name in fitted]
    repro = [r.spec.name for r in compared if r.spec.name not in fitted]
    lines += [
        f"Of the {len(compared)} figures compared with the paper's numbers, {len(repro)} compare "
        f"an independent prediction with it, whether or not they agree ({', '.join(repro) or 'none'}), "
        f"and {len(checks)} are consistency checks ({', '.join(checks) or 'none'}).",
        "",
    ]
    if (path.parent / "CHANGES.md").is_file():
        lines += [
            "How these numbers moved from the previous measurement (a window chosen by each run, "
            "GPU memory in 1e9-byte GB, Continuum with unsourced constants): `CHANGES.md`, "
            "written by `python experiments/figure_changes.py REV`.",
            "",
        ]
    for res in results:
        spec = res.spec
        check = spec.name in fitted and bool(res.rows)
        lines += [f"## {spec.name}: {spec.title}" + (" — consistency check" if check else ""), ""]
        if check:
            lines += [
                "*Consistency check, not a reproduction:* the compared metric depends on "
                "constants fitted to the paper: "
                + ", ".join(f"`{name}`" for name in fitted[spec.name])
                + ".",
                "",
            ]
        for f in res.files:
            if f.suffix == ".png":
                lines += [f"![{spec.name}]({f.name})", ""]
        if res.measured:
            lines += [res.measured, ""]
        if res.table_md:
            lines += [res.table_md, ""]
        if res.rows:
            lines += [
                "| metric | series | x | sim | paper | sim/paper |",
                "|---|---|---|---|---|---|",
            ]
            for r in res.rows:
                lines.append(
                    f"| {r.metric} | {r.series} | {'' if r.x is None else r.x} | {_fmt(r.sim)} | "
                    f"{_fmt(r.paper)} | {'—' if math.isnan(r.ratio) else f'{r.ratio:.2f}'} |"
                )
            lines.append("")
        for text in res.reading:
            lines += [text, ""]
        # what we know of why the numbers differ, its numbers rendered from this run's table
        reading = report_reading(res, path.parent / "data", timing["reduced"])
        if reading:
            lines += [reading, ""]
        note = spec.raw.get("note", "").strip()
        if note:
            lines += [f"*Note.* {note}", ""]
    path.write_text("\n".join(lines))
