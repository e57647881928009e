"""The placeholders of a reading (`{EXPR:METRIC:FORMAT}`, see thundersim.lab.readings), parsed:
what they select (series, x, the paper's number or the run's) and how they print."""

from __future__ import annotations

import re
from dataclasses import dataclass

from thundersim.lab.formats import format_value, is_format

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
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
    if len(parts) == 2 and is_format(metric):  # {EXPR:FORMAT}
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
    return [m[1] for m in PLACEHOLDER.finditer(text) if m[1] is not None]
