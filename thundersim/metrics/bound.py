"""The paper's bound on unused memory, "unused < c_min x dt per node", checked on a run's memory
samples (the Recorder's `stp_bound` reports it in summary.json; reported, never enforced).

Per backend and per tick interval [k dt, (k+1) dt) (the policy's monitor period; ticks fire at
multiples of dt from t = 0): U = the integral of the unused term over the interval (the same left
Riemann sum over the memory samples that makes stp_cost's unused), and c_min = the smallest
context waiting for that backend's memory at any sample of the interval (a call withheld by the
policy, or a request in the engine's queue; the `c_min` memory column). An interval counts when
something waited at one of its samples; it violates the bound when U > c_min * dt (the
interval's actual length, for the last, shorter one). Intervals where the waiting contexts are
unknown (a live engine's queue with nothing withheld) count as `unknown`, not as checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# Per backend, its memory samples up to the end of the run: (backend index, [(t, unused tokens,
# something waited for memory, c_min, the seconds the sample stands for)]).
Samples = Iterable[tuple[int, list[tuple[float, float, bool, float, float]]]]


def _per_interval(samples: Samples, dt: float) -> dict[tuple[int, int], list[float]]:
    """(backend, k) -> [U, c_min] of every tick interval where something waited."""
    intervals: dict[tuple[int, int], list[float]] = {}
    for index, rows in samples:
        for t, unused, waited, c, width in rows:
            if width <= 0 or not waited:
                continue  # nothing waited for memory: its spare memory is idle, not unused
            left = width
            while left > 1e-12:  # a sample's span may cross a tick: split it
                k = int(t // dt)
                seg = min(left, (k + 1) * dt - t)
                if seg <= 0:  # t sits on the tick itself (rounding)
                    k, seg = k + 1, min(left, dt)
                acc = intervals.setdefault((index, k), [0.0, math.inf])
                acc[0] += unused * seg
                if not math.isnan(c):
                    acc[1] = min(acc[1], c)
                t += seg
                left -= seg
    return intervals


def unused_bound(samples: Samples, dt: float, end: float) -> dict:
    """{"dt", "intervals", "violations", "worst_ratio" (max U / (c_min dt)), "worst" (backend,
    interval start, U, c_min of the worst interval), "unknown"} of the samples up to `end`."""
    intervals = _per_interval(samples, dt)
    violations = unknown = 0
    worst_ratio, worst = 0.0, None
    for (index, k), (unused, c_min) in sorted(intervals.items()):
        if c_min == math.inf:
            unknown += 1
            continue
        length = min(dt, end - k * dt)
        bound = c_min * length
        ratio = unused / bound if bound > 0 else (math.inf if unused > 0 else 0.0)
        if unused > bound:
            violations += 1
        if worst is None or ratio > worst_ratio:
            worst_ratio = ratio
            worst = {"backend": index, "t": k * dt, "unused_token_s": unused, "c_min": c_min}
    return {
        "dt": dt,
        "intervals": len(intervals) - unknown,
        "violations": violations,
        "worst_ratio": worst_ratio,
        "worst": worst,
        "unknown": unknown,
    }
