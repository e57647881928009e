"""Readings whose numbers come from the run: the `reading` of a spec (experiments/specs/*.toml)
is a template, rendered into figures/REPORT.md from the table of the run that wrote the report,
so that no number typed into a reading outlives the run it was read from.

Placeholders
------------
A placeholder is ``{EXPR}``, ``{EXPR:METRIC}``, ``{EXPR:FORMAT}`` (when the second field is a
FORMAT below) or ``{EXPR:METRIC:FORMAT}``. ``{{`` and ``}}`` are literal braces. EXPR is one of:

    SERIES@X           the run's value at one point: ``{stp@96}`` (the spec's first plotted metric
                       of series stp at x = 96), ``{vllm@48:kv_hit_rate:%}``
    SERIES             the only point of a series (a timeline, a spec with one x):
                       ``{vllm:mem_imbalance_peak}``
    paper SERIES@X     the paper's number, from the spec's ``[paper.METRIC]`` table: SERIES's list
                       at x's position in the full grid, or SERIES's scalar; failing that, the
                       paper number the report compares with (fig2b's 2 TB crossing, fig9's
                       tails): ``{paper stp@96}``
    ratio A / B        A ÷ B, each side a value as above (``paper`` allowed):
                       ``{ratio stp/vllm@96}``, ``{ratio stp@96/paper stp@96}``
    change A / B       A ÷ B − 1, how far A is above B: ``{change stp/paper stp@96:%}``
    min SEL | max SEL | mean SEL
                       over several points: SERIES may be ``*``, X may be ``*`` or an inclusive
                       range ``LO..HI``: ``{min stp@48..96}``, ``{max *@*:kv_hit_rate}``; ``paper``
                       allowed (``{min paper *@*:kv_hit_rate}``)

SERIES is the value of the spec's ``[plot] series`` key (default ``policy``; for a list of keys
the values joined with ``/``, fig6a's ``vllm/none``), X the value of its ``[plot] x`` key (the
``rows`` key for a table; default ``concurrency``). X values compare by value (``5`` is ``5.0``);
an X holding ``:``, ``/``, ``@`` or a space is quoted: ``{stp@'pow:2'}``. In ``ratio`` and
``change`` the sides are split at ``/``, or at `` / `` (spaced) when a series holds a ``/``; an
``@X`` on the last side applies to the earlier sides that have none: ``{ratio stp/vllm@96}`` is
``stp@96 / vllm@96``.

METRIC is a column of the run's table (any scalar of a point's summary: ``kv_hit_rate``,
``env.peak_disk_bytes``, ``ttfr_p99_s``...), or a metric of the report's sim-vs-paper rows
(``tool p99 (s)`` of fig9, ``prep_s`` of fig2c). Default: the spec's first ``[plot] metrics``.
A validation spec's table has one row per policy and the columns ``METRIC.sim``,
``METRIC.live``, ``METRIC.rel_error`` of its results file.

FORMAT (shared with experiments/readme_tables.py, see ``format_value``):

    (none)        3 significant digits, grouped from 100 on: 426.57 → 427, 20.83 → 20.8,
                  0.871 → 0.87; a ratio → ``x2``, a change → ``+%``
    N             N decimals: ``1`` → 20.8
    % / %N        × 100 with " %", N decimals (default 0): 0.871 → 87 %
    pct / pctN    × 100, no sign (a column headed "hit %")
    x / xN        "×" after, N decimals (default 2): 1.46×
    k M G T       ÷ 1e3 … 1e12 and the letter, N decimals (default 1): ``M1`` → 3.2 M
    TB GB MB      bytes, decimal units, N decimals (default 2 for TB, else 0): 2.86 TB
    +…            a leading + signs every number (+2.8 %, −4.4 %); negatives get a real minus −
    a Python format spec (``.2f``, ``,.0f``, ``.1e``), used as it is

A value the run lacks because the run is a reduced one (a point of the full grid outside the
reduced grid) renders as "—"; in a full run it is an error, as is an unknown series, x or metric:
each names the spec file and the placeholder.

Typed numbers
-------------
``check(text, spec)`` refuses a reading that holds a number outside its placeholders, except:
an input of the spec (a value of its ``[grid]`` or ``[base]``, numbers inside strings included:
``pow:4`` allows 4, ``gen:swe:1500:0`` allows 1500); references (``Fig 4a``, ``Fig. 4a/5a``,
``Table 2``, ``§3.2``, ``Section 3``, ``Eq. 1``, ``Appendix B``, ``Problem 2``, ``issue 4``,
``arXiv 2602.13692``); years (1900–2099); digits inside a name (GLM-4.6, Qwen3-8B, H100, p99);
and the spec's ``reading_constants``, a top-level list for constants of the setup that are
neither inputs nor results (fig2a's 20 % imbalance threshold, fig2b's 2 TB disk):
``reading_constants = [20, 2]``.
A number glued to a unit (``8K``, ``15%``, ``3.2M``) is a number, and one glued to a letter
(``8K``) is never taken for an input.

The figures command renders each reading with ``report_reading``: a reading that does not check
or render stops it with the error, so no typed result reaches the report.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from thundersim.lab import data
from thundersim.lab.formats import DASH, format_value
from thundersim.lab.placeholders import PLACEHOLDER, Placeholder, parse, placeholders
from thundersim.lab.run_values import RunValues
from thundersim.lab.sweep import Spec, SpecError


class ReadingError(SpecError):
    """A reading that does not check or render: the message names the spec file and the
    placeholder."""


# ---- rendering --------------------------------------------------------------------------------
def _evaluate(p: Placeholder, run: RunValues) -> str:
    metric = p.metric or run.default_metric
    if not metric:
        raise ValueError("the spec plots no metric: name one ({EXPR:METRIC})")
    if p.op == "value":
        return format_value(run.one(p.operands[0], metric), p.fmt)
    if p.op in ("ratio", "change"):
        a, b = (run.one(o, metric) for o in p.operands)
        if a is None or b is None or b == 0:
            return DASH
        v = a / b if p.op == "ratio" else a / b - 1
        return format_value(v, p.fmt or ("x2" if p.op == "ratio" else "+%"))
    vals = [v for v in run.values(p.operands[0], metric) if v is not None]
    if not vals:
        return format_value(run.lacking(p.operands[0]), p.fmt)
    agg = {"min": min, "max": max, "mean": lambda v: sum(v) / len(v)}[p.op]
    return format_value(agg(vals), p.fmt)


def _fail(spec: Spec, source: str | None, problem: str) -> ReadingError:
    where = f" {{{source}}}" if source is not None else ""
    return ReadingError(f"{spec.path}: reading{where}: {problem}")


def render(
    spec: Spec,
    table: pd.DataFrame | None,
    rows: Iterable = (),
    reduced: bool = False,
    text: str | None = None,
) -> str:
    """The spec's reading (or `text`) with every placeholder replaced by the run's number.

    `table`: the run's sweep table (one row per point, figures/data/NAME.csv); `rows`: the
    report's sim-vs-paper comparisons (objects with metric, series, x, sim, paper); `reduced`:
    the run is the reduced grid, so points outside it render as "—"."""
    text = spec.raw.get("reading", "") if text is None else text
    run = RunValues(spec, table, rows, reduced)

    def sub(m: re.Match) -> str:
        if m[0] in ("{{", "}}"):
            return m[0][0]
        try:
            return _evaluate(parse(m[1]), run)
        except ValueError as exc:
            raise _fail(spec, m[1], str(exc)) from None

    return PLACEHOLDER.sub(sub, text.strip())


# ---- typed numbers ----------------------------------------------------------------------------
_REF = re.compile(
    r"(?:\b(?:Figs?|Figures?|Tables?|Tabs?|Sections?|Secs?|Eqs?|Equations?|Appendix|Problems?"
    r"|[Ii]ssues?|Algorithms?|Algs?|PR)\.?|§|#)\s*"
    r"\d+[a-z]?(?:\.\d+)*(?:\s*[/–]\s*\d+[a-z]?(?:\.\d+)*)*"
)
_ARXIV = re.compile(r"\barXiv:?\s*\d{4}\.\d{4,5}(?:v\d+)?")
_NAME = re.compile(r"[A-Za-z_Δ][A-Za-z0-9_]*(?:[-.:/][A-Za-z0-9_]+)*")
_NUMBER = re.compile(r"[0-9](?:[0-9,]*[0-9])?(?:\.[0-9]+)?")
_YEAR = re.compile(r"(?:19|20)\d\d")


def _inputs(spec: Spec) -> set[float]:
    """The numbers of a spec's inputs ([grid] and [base] values, numbers in strings too)."""
    out: set[float] = set()
    values = list(spec.base.values()) + [v for vs in spec.grid.values() for v in vs]
    values += list(spec.raw.get("reading_constants", []))
    for v in values:
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, bool):
                continue
            if isinstance(item, int | float):
                out.add(float(item))
            elif isinstance(item, str):
                out |= {float(n) for n in re.findall(r"\d+(?:\.\d+)?", item)}
    return out


def typed_numbers(text: str, spec: Spec) -> list[str]:
    """The numbers of a reading outside its placeholders that are not inputs, references,
    years or parts of names, each with a little context."""
    inputs = _inputs(spec)
    prose = PLACEHOLDER.sub(lambda m: m[0][0] if m[1] is None else " ", text)
    blank = prose
    for pattern in (_ARXIV, _REF, _NAME):
        blank = pattern.sub(lambda m: " " * len(m[0]), blank)
    found = []
    for m in _NUMBER.finditer(blank):
        n = m[0]
        if _YEAR.fullmatch(n):
            continue
        glued = m.end() < len(prose) and prose[m.end()].isalpha()  # 8K, 3.2M: not an input
        if not glued and float(n.replace(",", "")) in inputs:
            continue
        lo, hi = max(0, m.start() - 25), min(len(prose), m.end() + 25)
        found.append(f"{n!r} in “…{prose[lo:hi].strip()}…”")
    return found


def check(text: str, spec: Spec) -> None:
    """Refuse a reading that types a result: every placeholder must parse, and no number may
    stand outside them but the spec's inputs, references, years and names (module docstring).
    Raises ReadingError naming the spec file."""
    for source in placeholders(text):
        try:
            parse(source)
        except ValueError as exc:
            raise _fail(spec, source, str(exc)) from None
    typed = typed_numbers(text, spec)
    if typed:
        raise _fail(
            spec,
            None,
            "typed numbers outside placeholders (write them as {SERIES@X...}, see "
            "thundersim/lab/readings.py): " + "; ".join(typed),
        )


# ---- the report -------------------------------------------------------------------------------
def run_table(spec: Spec, data_dir: Path) -> pd.DataFrame | None:
    """The run's table of a spec: data_dir/NAME.csv, written by the run; for a validation spec
    its results file, one row per policy with METRIC.sim / .live / .rel_error columns."""
    if spec.kind == "validation":
        results = validation_data(spec)
        if results is None:
            return None
        records = results["records"] if isinstance(results, dict) else results
        return validation_table(records)
    path = Path(data_dir) / f"{spec.name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def validation_data(spec: Spec) -> dict | list | None:
    """A validation spec's results file (its `source`, found as thundersim.lab.data finds
    files: the current directory, then the installed results), parsed; None before the first
    measurement."""
    source = spec.raw.get("source", "")
    path = data.locate(source) if source else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def validation_table(records: list[dict]) -> pd.DataFrame:
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r["policy"], {"policy": r["policy"]})
        for field in ("sim", "live", "rel_error"):
            v = r.get(field)
            row[f"{r['metric']}.{field}"] = math.nan if v is None else v
    return pd.DataFrame(list(rows.values()))


def report_reading(res, data_dir: Path, reduced: bool = False) -> str:
    """The report's reading paragraph of one figure (a FigureResult: spec and sim-vs-paper rows),
    rendered from the run's table in data_dir; "" when the spec has none. A reading that does not
    check or render raises ReadingError."""
    spec = res.spec
    text = spec.raw.get("reading", "").strip()
    if not text:
        return ""
    check(text, spec)
    table = run_table(spec, data_dir)
    return f"*Reading.* {render(spec, table, res.rows, reduced, text)}"
