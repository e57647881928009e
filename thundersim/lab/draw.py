"""How each kind of figure is drawn from its sweep (a spec's `kind`), and what it compares.

Each `draw_KIND(spec, sweep, res, out)` draws one figure with matplotlib (PNG and PDF under
`out`) from the spec's sweep table and the tables its points kept, and appends to `res` the
sim-vs-paper comparisons it can make, any table it renders, and what it could not draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from thundersim.lab.points import load_programs, read_table  # noqa: E402
from thundersim.lab.readings import validation_data  # noqa: E402
from thundersim.lab.report import Comparison, FigureResult, fmt, fmt_pct  # noqa: E402
from thundersim.lab.sweep import Spec, SweepResult  # noqa: E402

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


def use_style() -> None:
    """The house style for every figure drawn after it."""
    plt.rcParams.update(STYLE)


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
        cells = [fmt(row[m]) for m in metrics]
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
    traces = spec.raw.get("traces", [])
    paper = _paper(spec, "tool_p95_p99")
    fig, axes = plt.subplots(1, len(traces), figsize=(2.6 * len(traces), 2.4), squeeze=False)
    for ax, path in zip(axes[0], traces, strict=True):
        by_tool: dict[str, list[float]] = {}
        for p in load_programs(path):  # a bundled trace, or gen:WORKLOAD:N:SEED for larger samples
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
    data = validation_data(spec)
    if data is None:
        name = Path(spec.raw.get("source", "")).name
        res.reading.append(
            f"No measurement yet: run `python experiments/bench_live_fidelity.py` (writes {name})."
        )
        return
    records = data["records"] if isinstance(data, dict) else data
    t = pd.DataFrame(records)
    t = t[t.metric != "preemptions"]
    fig, ax = plt.subplots(figsize=(3.3, 2.4))
    short = {"throughput_steps_per_min": "tput (whole run)", "kv_hit_rate": "hit rate"}
    scenario = t["scenario"] if "scenario" in t else pd.Series("", index=t.index)
    labels = [
        f"{s}\n{r.policy}\n{short.get(r.metric, r.metric)}".lstrip("\n")
        for s, r in zip(scenario, t.itertuples(), strict=True)
    ]
    ax.bar(labels, 100 * t.rel_error)
    ax.tick_params(axis="x", labelsize=5)
    ax.axhline(15, color="gray", ls=":", lw=1)
    ax.axhline(-15, color="gray", ls=":", lw=1)
    ax.set_ylabel("sim vs live error (%)")
    fig.suptitle(spec.title, fontsize=8, y=1.04)
    _save(fig, res, out)
    res.table_md = (
        "| scenario | policy | metric | sim | live | error |\n|---|---|---|---|---|---|\n"
        + "\n".join(
            f"| {r.get('scenario', '')} | {r['policy']} | {r['metric']} | {fmt(r['sim'])} | "
            f"{fmt(r['live'])} | {fmt_pct(r['rel_error'])} |"
            for r in records
        )
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
