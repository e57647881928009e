"""README.md's result tables, generated from the committed results files.

Each result table of the README is a generated block between two markers:

    <!-- table:NAME -->
    ...written by this script, do not edit...
    <!-- /table:NAME -->

rendered from one results file (figures/data/*.csv written by `thundersim figures`,
experiments/results/*.json written by the benchmarks) by the declarative definition NAME in
TABLES below: which file, which rows, which columns, how each cell is formatted (the formats of
thundersim/lab/readings.py: `%`, `pct`, `x2`, `TB`, `,.0f`...).

    python experiments/readme_tables.py           # rewrite every block in place
    python experiments/readme_tables.py --check   # exit 1 listing the stale or missing blocks

A block whose markers are missing from the README is an error for both (nothing is inserted
silently: where a table goes is the README's prose).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from thundersim.lab.formats import format_value  # noqa: E402

README = ROOT / "README.md"


@dataclass(frozen=True)
class Col:
    """One column: its header and, for each README row, the value of `metric` (a column of the
    results table; a tuple: several, joined with " / ") in the row's group, narrowed to the
    source rows where the columns of `at` have those values (the value must be one); formatted with `fmt` (one per
    metric) and put into `template` ("{}" is the value)."""

    header: str
    metric: str | tuple[str, ...]
    at: dict = field(default_factory=dict)
    fmt: str | tuple[str, ...] = ""
    template: str = "{}"
    labels: dict = field(default_factory=dict)  # a value → how the table shows it


@dataclass(frozen=True)
class Table:
    """One generated block: `source` (relative to the repository root) read as a table; its
    rows filtered by `where` (column → the values kept, each of which the file must have); one
    README row per value of `row_key` (in `order`, else in the file's order), or per source row
    when row_key is None."""

    name: str
    source: str
    columns: tuple[Col, ...]
    row_key: str | None = None
    order: tuple = ()
    where: dict = field(default_factory=dict)
    json_records: str | None = None  # JSON: the list of records under this key


def _lab_columns() -> tuple[Col, ...]:
    by_c = tuple(
        Col(
            str(c),
            ("throughput_steps_per_min", "kv_hit_rate"),
            at={"concurrency": c},
            fmt=(",.0f", "pct"),
        )
        for c in (24, 48, 72, 96)
    )
    return (
        Col("policy", "policy", template="`{}`"),
        *by_c,
        Col("TTFR p99 @96 (s)", "ttfr_p99_s", at={"concurrency": 96}, fmt=",.0f"),
    )


# The two-replica tables' metrics (own_replicas and own_replicas_aware share them).
REPLICA_METRICS = (
    Col("steps/min", "throughput_steps_per_min", fmt=",.0f"),
    Col("hit %", "kv_hit_rate", fmt="pct"),
    Col("preemptions", "preemptions", fmt=",.0f"),
    Col("imbalance peak", "mem_imbalance_peak", fmt=".2f"),
    Col("> 20 %", "mem_imbalance_frac_over_20pct", fmt="%"),
)

TABLES: tuple[Table, ...] = (
    # README "Results so far": every policy on one replica (the policy-lab setup is the fig4a
    # setup, which is own_policies'), throughput / hit rate by parallel programs, TTFR p99 at 96
    Table(
        name="policy_lab",
        source="figures/data/own_policies.csv",
        row_key="policy",
        order=("vllm", "lru", "continuum", "stp", "stp_fair", "stp_exact", "stp_tool"),
        columns=_lab_columns(),
    ),
    # README "Results so far": two replicas at 192 programs, vLLM with each router ...
    Table(
        name="replicas_routers",
        source="figures/data/own_replicas.csv",
        row_key="router",
        order=("least_loaded", "round_robin", "sticky", "cache_aware"),
        columns=(
            Col("policy", "router", template="`vllm` + `{}`"),
            *REPLICA_METRICS,
        ),
    ),
    # ... and the program-aware policies on the same setup
    Table(
        name="replicas_aware",
        source="figures/data/own_replicas_aware.csv",
        row_key="policy",
        order=("lru", "continuum", "stp", "stp_fair", "stp_exact", "stp_tool"),
        columns=(
            Col("policy", "policy", template="`{}`"),
            *REPLICA_METRICS,
        ),
    ),
    # README "Tool environments": none / gc / gc+prefetch on the bundled swe and openhands traces
    Table(
        name="tool_manager",
        source="figures/data/own_tool_manager.csv",
        columns=(
            Col("trace", "trace", template="`{}`"),
            Col("mode", "tool_manager", template="`{}`"),
            Col("peak disk", "env.peak_disk_bytes", fmt="GB"),
            Col("peak ports", "env.peak_ports", fmt=",.0f"),
            Col("left at the end", "env.leaked_envs", fmt=",.0f"),
            Col("mean prep (s)", "env.mean_prep_s", fmt=".1f"),
            Col("mean wait for env (s)", "env.mean_env_wait_s", fmt=".1f"),
            Col("steps/min (whole run)", "throughput_steps_per_min", fmt=",.0f"),
        ),
    ),
    # README "Results so far": starvation under a burst (experiments/fairness_burst.py)
    Table(
        name="fairness_burst",
        source="experiments/results/fairness_burst.json",
        json_records="records",
        columns=(
            Col("policy", "policy", template="`{}`"),
            Col("steps/min (whole run)", "throughput_steps_per_min", fmt=",.0f"),
            Col("small: wait p50 / p99 (s)", ("small_p50_s", "small_p99_s"), fmt=(",.1f", ",.0f")),
            Col("large: wait p50 / p99 (s)", ("large_p50_s", "large_p99_s"), fmt=(",.1f", ",.0f")),
            Col("large: max (s)", "large_max_s", fmt=",.0f"),
        ),
    ),
    # README "The engine model": step times against measured vLLM deployments
    # (experiments/bench_latency_silicon.py; validation only, nothing fitted to these rows)
    Table(
        name="latency_silicon",
        source="experiments/results/latency_silicon_summary.csv",
        columns=(
            Col("model", "model"),
            Col("GPU", "gpu"),
            Col("rows", "rows", fmt=",.0f"),
            Col(
                "TPOT error: roofline / measured (%)",
                ("roofline_tpot", "measured_tpot"),
                fmt=(".1f", ".1f"),
            ),
            Col(
                "TTFT error: roofline / measured (%)",
                ("roofline_ttft", "measured_ttft"),
                fmt=(".1f", ".1f"),
            ),
            Col("default", "default"),
        ),
    ),
    # README "Results so far": the simulator's speed by fleet size (experiments/bench_scale.py)
    Table(
        name="fleet_scale",
        source="experiments/results/scale.csv",
        where={"replicas": (1, 4, 16, 32, 64)},
        columns=(
            Col("policy", "policy", template="`{}`"),
            Col("replicas", "replicas", fmt=",.0f"),
            Col("programs", "concurrency", fmt=",.0f"),
            Col("sim-s per wall-s (loop)", "sim_s_per_wall_s", fmt=",.0f"),
            Col("LLM calls per wall-s", "llm_calls_per_wall_s", fmt=",.0f"),
            Col("peak RSS (MB)", "peak_rss_mb", fmt=",.0f"),
        ),
    ),
    # README "serve": the proxy against direct calls, engine bound or not
    # (experiments/bench_serve_rotation.py)
    Table(
        name="serve_rotation",
        source="experiments/results/serve_rotation.json",
        json_records="records",
        columns=(
            Col("engine", "engine"),
            Col("rounds", "rounds", fmt=",.0f"),
            Col(
                "serve / direct calls per s: min / median / max",
                ("ratio_min", "ratio_median", "ratio_max"),
                fmt=(".2f", ".2f", ".2f"),
            ),
            Col(
                "longest stall: serve / direct (s)",
                ("serve_longest_gap_s", "direct_longest_gap_s"),
                fmt=(".2f", ".2f"),
            ),
            Col("proxy cost per call, p50 (ms)", "proxy_cost_p50_ms_median", fmt=".1f"),
            Col("added p50, idle (ms)", "probe_added_p50_ms", fmt=".1f"),
        ),
    ),
    # README "Live mode": the simulator against a real vLLM after calibration
    Table(
        name="live_fidelity",
        source="experiments/results/live_fidelity.json",
        json_records="records",
        where={"metric": ("throughput_steps_per_min", "kv_hit_rate", "preemptions")},
        columns=(
            Col("scenario", "scenario"),
            Col("policy", "policy", template="`{}`"),
            Col(
                "metric",
                "metric",
                labels={
                    "throughput_steps_per_min": "throughput, whole run (steps/min)",
                    "kv_hit_rate": "KV hit rate",
                    "preemptions": "preemptions",
                },
            ),
            Col("sim", "sim"),
            Col("live", "live"),
            Col("sim vs live", "rel_error", fmt="+%1"),
        ),
    ),
)


# ---- rendering ------------------------------------------------------------------------------
class TableError(ValueError):
    pass


def load(table: Table, root: Path = ROOT) -> pd.DataFrame:
    path = root / table.source
    if not path.is_file():
        raise TableError(f"{table.name}: no results file {table.source}")
    if path.suffix == ".csv":
        t = pd.read_csv(path)
    elif path.suffix == ".json":
        data = json.loads(path.read_text())
        records = data[table.json_records] if table.json_records else data
        t = pd.DataFrame(records)
    else:
        raise TableError(f"{table.name}: cannot read {table.source} (csv or json)")
    for key, allowed in table.where.items():
        if key not in t.columns:
            raise TableError(f"{table.name}: {table.source} has no column {key!r}")
        absent = [v for v in allowed if not (t[key] == v).any()]
        if absent:  # a defined row that the file no longer has is an error, not a shorter table
            raise TableError(f"{table.name}: {table.source} has no {key} {absent}")
        t = t[t[key].isin(list(allowed))]
    return t.reset_index(drop=True)


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _cell(table: Table, col: Col, group: pd.DataFrame) -> str:
    rows = group
    for key, want in col.at.items():
        rows = rows[[_same(v, want) for v in rows[key]]]
    metrics = col.metric if isinstance(col.metric, tuple) else (col.metric,)
    fmts = col.fmt if isinstance(col.fmt, tuple) else (col.fmt,) * len(metrics)
    parts = []
    for metric, fmt in zip(metrics, fmts, strict=True):
        if metric not in rows.columns:
            raise TableError(f"{table.name}: {table.source} has no column {metric!r}")
        values = list(dict.fromkeys(rows[metric].astype(str)))
        if len(values) != 1:  # a key column is one value over the group; a metric, one row
            raise TableError(
                f"{table.name}: column {col.header!r}: {len(rows)} rows of {table.source} match "
                f"{col.at or 'the row'} with different {metric} (need exactly one)"
            )
        v = rows[metric].iloc[0]
        parts.append(str(col.labels[v]) if v in col.labels else format_value(v, fmt))
    return col.template.format(" / ".join(parts))


def render(table: Table, root: Path = ROOT) -> str:
    """The block's content: a markdown table (and a comment naming its source)."""
    t = load(table, root)
    if table.row_key is None:
        groups = [t.iloc[[i]] for i in range(len(t))]
    else:
        keys = list(table.order) or list(dict.fromkeys(t[table.row_key]))
        missing = [k for k in keys if not (t[table.row_key] == k).any()]
        if missing:
            raise TableError(f"{table.name}: {table.source} has no rows {missing}")
        groups = [t[t[table.row_key] == k] for k in keys]
    if not groups:
        raise TableError(f"{table.name}: no rows in {table.source}")
    lines = [
        f"<!-- generated by experiments/readme_tables.py from {table.source}; do not edit -->",
        "| " + " | ".join(c.header for c in table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    for g in groups:
        lines.append("| " + " | ".join(_cell(table, c, g) for c in table.columns) + " |")
    return "\n".join(lines)


def _block(name: str) -> re.Pattern:
    return re.compile(
        rf"(<!-- table:{re.escape(name)} -->\n)(.*?)(<!-- /table:{re.escape(name)} -->)", re.S
    )


def update(text: str, tables=TABLES, root: Path = ROOT) -> tuple[str, list[str], list[str]]:
    """(new text, stale block names, problems: missing markers, unreadable sources)."""
    stale, problems = [], []
    for table in tables:
        pattern = _block(table.name)
        found = pattern.findall(text)
        if len(found) != 1:
            problems.append(
                f"{table.name}: {'no' if not found else len(found)} block "
                f"<!-- table:{table.name} --> … <!-- /table:{table.name} --> in the README"
            )
            continue
        try:
            body = render(table, root) + "\n"
        except (TableError, KeyError, ValueError) as exc:
            problems.append(str(exc))
            continue
        if found[0][1] != body:
            stale.append(table.name)
            text = pattern.sub(lambda m, b=body: m[1] + b + m[3], text)
    return text, stale, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a block is stale or missing")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    new, stale, problems = update(text)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if args.check:
        for name in stale:
            print(
                f"stale: {name} (regenerate: python experiments/readme_tables.py)",
                file=sys.stderr,
            )
        if stale or problems:
            return 1
        print(f"{args.readme}: {len(TABLES)} generated tables up to date", file=sys.stderr)
        return 0
    if new != text:
        args.readme.write_text(new)
    print(
        f"{args.readme}: {len(stale)} of {len(TABLES)} tables rewritten"
        + (f" ({', '.join(stale)})" if stale else ""),
        file=sys.stderr,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
