"""Prometheus text format, as engines expose their counters and gauges on `/metrics` (vLLM,
SGLang): parsed into name -> [(labels, value)], read by the live adapters."""

from __future__ import annotations

import re

_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+([-+0-9.eEinfNa]+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(3) or ""))
            out.setdefault(m.group(1), []).append((labels, float(m.group(4))))
    return out


def metric_sum(metrics: dict, name: str) -> float:
    return sum(v for _, v in metrics.get(name, []))
