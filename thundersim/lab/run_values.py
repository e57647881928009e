"""The values a reading's placeholders can name in one run: the run's table, the report's
sim-vs-paper rows and the spec's [paper] numbers, selected by series and x."""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import product

import pandas as pd

from thundersim.lab.placeholders import Operand
from thundersim.lab.points import POINT_DEFAULTS
from thundersim.lab.sweep import Spec


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


class RunValues:
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
            return self.lacking(o)
        return v[0]

    def lacking(self, o: Operand):
        if self.reduced:
            return None  # a point of the full grid outside the reduced one: "—"
        where = o.series + ("" if o.x is None else f"@{o.x}")
        raise ValueError(f"the run has no point {where}")
