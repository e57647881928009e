"""Distributions of a trace: what `thundersim trace stats` prints, and what the generators'
tests compare with their cited sources."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from thundersim.traces.schema import ProgramSpec

PERCENTILES = (5, 25, 50, 75, 95, 99)


def describe(values: Iterable[float]) -> dict:
    """count, mean and p5/p25/p50/p75/p95 (None when there are no values)."""
    arr = np.asarray(list(values), dtype=float)
    out: dict = {"count": int(arr.size), "mean": float(arr.mean()) if arr.size else None}
    for q in PERCENTILES:
        out[f"p{q}"] = float(np.percentile(arr, q)) if arr.size else None
    return out


def trace_stats(programs: Sequence[ProgramSpec]) -> dict[str, dict]:
    """Per-program and per-step distributions, keyed by quantity."""
    prompts = [[p.prompt_tokens(i) for i in range(len(p.steps))] for p in programs]
    steps = [s for p in programs for s in p.steps]
    by_tool: dict[str, list[float]] = {}
    for s in steps:
        if s.tool:
            by_tool.setdefault(s.tool, []).append(s.tool_s)
    return {
        "steps_per_program": describe(len(p.steps) for p in programs),
        "context_at_call": describe(c for calls in prompts for c in calls),
        "mean_context_per_call": describe(float(np.mean(calls)) for calls in prompts),
        "peak_context_per_program": describe(p.peak_context for p in programs),
        "input_tokens_per_step": describe(s.input_tokens for s in steps),
        "output_tokens_per_step": describe(s.output_tokens for s in steps),
        "tool_seconds_per_step": describe(s.tool_s for s in steps if s.tool),
        "tool_seconds_by_tool": {t: describe(v) for t, v in sorted(by_tool.items())},
        "resets_per_program": describe(sum(s.reset for s in p.steps) for p in programs),
        "env_prep_s": describe(p.env.prep_s for p in programs),
        "env_disk_bytes": describe(p.env.disk_bytes for p in programs),
        "shared_prefix_tokens": describe(p.prefix_tokens for p in programs),
    }
