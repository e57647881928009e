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
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pandas as pd

from thundersim.lab.sweep import POINT_DEFAULTS, ROOT, Spec, SpecError

DASH = "—"
MINUS = "−"


class ReadingError(SpecError):
    """A reading that does not check or render: the message names the spec file and the
    placeholder."""


# ---- formats ----------------------------------------------------------------------------------
_UNITS = {
    "%": (100.0, " %", 0),
    "pct": (100.0, "", 0),
    "x": (1.0, "×", 2),
    "k": (1e-3, " k", 1),
    "M": (1e-6, " M", 1),
    "G": (1e-9, " G", 1),
    "T": (1e-12, " T", 1),
    "TB": (1e-12, " TB", 2),
    "GB": (1e-9, " GB", 0),
    "MB": (1e-6, " MB", 0),
}
_NAMED = re.compile(r"^(?P<sign>\+?)(?P<unit>%|pct|x|k|M|G|T|TB|GB|MB)?(?P<digits>\d*)$")


def format_value(v, fmt: str = "") -> str:
    """One value in one FORMAT of the module docstring; NaN / None → "—", strings as they are."""
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    m = _NAMED.match(fmt)
    if m is None:  # a Python format spec
        try:
            return format(v, fmt)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"format {fmt!r}: {exc}") from None
    v = float(v)
    scale, suffix, default = _UNITS.get(m["unit"] or "", (1.0, "", None))
    v *= scale
    digits = int(m["digits"]) if m["digits"] else default
    text = _smart(abs(v)) if digits is None else f"{abs(v):,.{digits}f}"
    zero = float(text.replace(",", "")) == 0  # no "−0"
    sign = "" if zero else MINUS if v < 0 else "+" if m["sign"] else ""
    return f"{sign}{text}{suffix}"


def _is_format(text: str) -> bool:
    """A FORMAT rather than a METRIC in {EXPR:...}: a named format, or a Python spec."""
    return bool(text) and (_NAMED.match(text) is not None or text[0] in ".,")


def _smart(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:.3g}"
    if v >= 0.01 or v == 0:
        return f"{v:.2f}"
    return f"{v:.2g}"


# ---- parsing ----------------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_OPS = ("ratio", "change", "min", "max", "mean")


@dataclass(frozen=True)
class Operand:
    series: str  # a series value or "*"
    x: str | None  # None: not given; "*": all; "LO..HI": a range; else a value
    paper: bool = False


@dataclass(frozen=True)
class Placeholder:
    source: str  # the text between the braces
    op: str  # "value", or one of _OPS
    operands: tuple[Operand, ...]
    metric: str  # "" for the spec's default
    fmt: str


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, cur, quote = [], [], False
    i = 0
    while i < len(text):
        if text[i] == "'":
            quote = not quote
        if not quote and text.startswith(sep, i):
            parts.append("".join(cur))
            cur = []
            i += len(sep)
            continue
        cur.append(text[i])
        i += 1
    if quote:
        raise ValueError("unclosed quote")
    parts.append("".join(cur))
    return parts


def _operand(text: str) -> Operand:
    text = text.strip()
    paper = False
    if text.startswith("paper ") or text == "paper":
        paper, text = True, text[len("paper") :].strip()
    if not text:
        raise ValueError("missing series")
    at = _split_outside_quotes(text, "@")
    if len(at) > 2:
        raise ValueError(f"more than one @ in {text!r} (quote an x holding @)")
    series = at[0].strip()
    if not series or " " in series:
        raise ValueError(f"bad series {series!r}")
    x = None
    if len(at) == 2:
        x = at[1].strip()
        if len(x) >= 2 and x[0] == x[-1] == "'":
            x = x[1:-1]
        elif not x or any(c in x for c in " '"):
            raise ValueError(f"bad x {at[1]!r} (quote it: @'...')")
    return Operand(series, x, paper)


def parse(source: str) -> Placeholder:
    """One placeholder's text (between the braces); ValueError says what is wrong."""
    parts = _split_outside_quotes(source, ":")
    if len(parts) > 3:
        raise ValueError("more than EXPR:METRIC:FORMAT (quote an x holding ':')")
    expr = parts[0].strip()
    metric = parts[1].strip() if len(parts) > 1 else ""
    fmt = parts[2].strip() if len(parts) > 2 else ""
    if len(parts) == 2 and _is_format(metric):  # {EXPR:FORMAT}
        metric, fmt = "", metric
    word, _, rest = expr.partition(" ")
    op = word if word in _OPS else "value"
    body = rest if op != "value" else expr
    if op in ("ratio", "change"):
        sides = _split_outside_quotes(body, " / ")
        if len(sides) == 1:
            sides = _split_outside_quotes(body, "/")
        if len(sides) != 2:
            raise ValueError(
                f"{op} needs two sides A / B (separate them with ' / ' when a series holds '/')"
            )
        a, b = (_operand(s) for s in sides)
        if a.x is None and b.x is not None:
            a = Operand(a.series, b.x, a.paper)
        operands = (a, b)
    else:
        operands = (_operand(body),)
    for o in operands:
        wild = o.series == "*" or o.x == "*" or (o.x is not None and ".." in o.x)
        if wild and op not in ("min", "max", "mean"):
            raise ValueError("'*' and LO..HI select several points: use min, max or mean")
    if fmt:
        try:
            format_value(1.0, fmt)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return Placeholder(source, op, operands, metric, fmt)


def placeholders(text: str) -> list[str]:
    """The text of every placeholder of a reading, in order."""
    return [m[1] for m in _PLACEHOLDER.finditer(text) if m[1] is not None]


# ---- the run's numbers ------------------------------------------------------------------------
def _same(a, b) -> bool:
    """x values compare by value: 96 == "96" == 96.0; strings as strings."""
    if a is None or b is None:
        return a is b
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _in_range(x, lo_hi: str) -> bool:
    lo, _, hi = lo_hi.partition("..")
    v, lo_v, hi_v = _num(x), _num(lo), _num(hi)
    if v is None or lo_v is None or hi_v is None:
        return False
    return lo_v <= v <= hi_v


class _Run:
    """The values a reading can name: the run's table, the report's sim-vs-paper rows, and the
    spec's [paper] numbers."""

    def __init__(self, spec: Spec, table: pd.DataFrame | None, rows: Iterable = (), reduced=False):
        self.spec = spec
        self.reduced = reduced
        plot = spec.raw.get("plot", {})
        self.s_key = plot.get("series", "policy")
        x_key = plot.get("rows", "trace") if spec.kind == "table" else plot.get("x", "concurrency")
        self.x_key = x_key if x_key in POINT_DEFAULTS else None
        metrics = plot.get("metrics") or []
        self.default_metric = metrics[0] if metrics else ""
        table = table if table is not None else pd.DataFrame()
        table = table.reset_index(drop=True)
        self.table = table
        self.t_series = self._series_of(table)
        self.t_x = (
            list(table[self.x_key])
            if self.x_key and self.x_key in table.columns
            else [None] * len(table)
        )
        self.cmp = [(str(r.metric), str(r.series), r.x, _num(r.sim), _num(r.paper)) for r in rows]
        # the full grid's series and x values (a reduced run has some of them)
        self.grid_series = set(self.t_series) | {c[1] for c in self.cmp}
        keys = self.s_key if isinstance(self.s_key, list) else [self.s_key]
        values = [self._axis(k) for k in keys]
        if all(values):
            self.grid_series |= {"/".join(map(str, v)) for v in product(*values)}
        self.grid_x = self._axis(self.x_key) if self.x_key else []

    def _axis(self, key: str) -> list:
        if key in self.spec.grid:
            return list(self.spec.grid[key])
        if key in self.spec.base:
            return [self.spec.base[key]]
        return []

    def _series_of(self, t: pd.DataFrame) -> list[str]:
        if t.empty:
            return []
        keys = self.s_key if isinstance(self.s_key, list) else [self.s_key]
        if not all(k in t.columns for k in keys):
            return [""] * len(t)
        return list(t[keys].astype(str).agg("/".join, axis=1))

    def metrics(self) -> list[str]:
        numeric = self.table.select_dtypes("number").columns
        return sorted(set(numeric) | {c[0] for c in self.cmp})

    def _x_ok(self, o: Operand, x) -> bool:
        if o.x is None or o.x == "*":
            return True
        if ".." in o.x:
            return _in_range(x, o.x)
        return _same(x, o.x)

    def _known(self, o: Operand) -> None:
        if o.series != "*" and o.series not in self.grid_series:
            have = ", ".join(sorted(s for s in self.grid_series if s)) or "none"
            raise ValueError(f"unknown series {o.series!r}; have {have}")
        if o.x not in (None, "*") and ".." not in o.x:
            xs = list(self.grid_x) + list(self.t_x) + [c[2] for c in self.cmp]
            if not any(_same(x, o.x) for x in xs):
                have = ", ".join(dict.fromkeys(str(x) for x in xs if x is not None)) or "none"
                raise ValueError(f"unknown x {o.x!r} ({self.x_key or 'no x axis'}); have {have}")

    def values(self, o: Operand, metric: str) -> list[float | None]:
        """The values an operand selects; an empty list: the run lacks them."""
        self._known(o)
        if o.paper:
            return self._paper(o, metric)
        if metric in self.table.columns:
            return [
                _num(v)
                for s, x, v in zip(self.t_series, self.t_x, self.table[metric], strict=True)
                if (o.series == "*" or s == o.series) and self._x_ok(o, x)
            ]
        if any(c[0] == metric for c in self.cmp):
            return [
                c[3]
                for c in self.cmp
                if c[0] == metric and (o.series == "*" or c[1] == o.series) and self._x_ok(o, c[2])
            ]
        raise ValueError(f"unknown metric {metric!r}; have {', '.join(self.metrics()) or 'none'}")

    def _paper(self, o: Operand, metric: str) -> list[float | None]:
        paper = self.spec.raw.get("paper", {}).get(metric, {})
        series = [s for s in paper if s != "source"] if o.series == "*" else [o.series]
        out: list[float | None] = []
        found = False
        for s in series:
            v = paper.get(s) if isinstance(paper, dict) else None
            if isinstance(v, int | float):
                found = True
                out.append(_num(v))
            elif isinstance(v, list):
                found = True
                xs = self.grid_x if self.grid_x else [None] * len(v)
                if o.x is None and len(v) == 1:
                    out.append(_num(v[0]))
                    continue
                if o.x is None:
                    raise ValueError(f"paper {metric} {s} has {len(v)} values: name an x")
                for x, pv in zip(xs, v, strict=False):
                    if self._x_ok(o, x):
                        out.append(_num(pv))
        if found:
            return out
        # the paper numbers the report compares with (computed rows: fig2b, fig2c, fig9)
        hits = [
            c[4]
            for c in self.cmp
            if c[0] == metric and (o.series == "*" or c[1] == o.series) and self._x_ok(o, c[2])
        ]
        if hits:
            return [_num(h) for h in hits]
        raise ValueError(f"no paper number for {metric!r} of series {o.series!r}")

    def one(self, o: Operand, metric: str) -> float | None:
        v = self.values(o, metric)
        if len(v) > 1:
            raise ValueError(
                f"{len(v)} points match; name the x ({self.x_key or 'x'}) or use min/max/mean"
            )
        if not v and o.paper:
            where = o.series + ("" if o.x is None else f"@{o.x}")
            raise ValueError(f"no paper number for {metric!r} at {where}")
        if not v:
            return self._lacking(o)
        return v[0]

    def _lacking(self, o: Operand):
        if self.reduced:
            return None  # a point of the full grid outside the reduced one: "—"
        where = o.series + ("" if o.x is None else f"@{o.x}")
        raise ValueError(f"the run has no point {where}")


def _evaluate(p: Placeholder, run: _Run) -> str:
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
        return format_value(run._lacking(p.operands[0]), p.fmt)
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
    run = _Run(spec, table, rows, reduced)

    def sub(m: re.Match) -> str:
        if m[0] in ("{{", "}}"):
            return m[0][0]
        try:
            return _evaluate(parse(m[1]), run)
        except ValueError as exc:
            raise _fail(spec, m[1], str(exc)) from None

    return _PLACEHOLDER.sub(sub, text.strip())


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
    prose = _PLACEHOLDER.sub(lambda m: m[0][0] if m[1] is None else " ", text)
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
        source = ROOT / spec.raw.get("source", "")
        if not source.is_file():
            return None
        data = json.loads(source.read_text())
        records = data["records"] if isinstance(data, dict) else data
        return validation_table(records)
    path = Path(data_dir) / f"{spec.name}.csv"
    return pd.read_csv(path) if path.is_file() else None


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
