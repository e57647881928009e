"""Numbers as readings and README tables print them: the FORMATs of thundersim.lab.readings
(also used by experiments/readme_tables.py)."""

from __future__ import annotations

import math
import re

DASH = "—"
MINUS = "−"

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


def is_format(text: str) -> bool:
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
