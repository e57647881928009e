"""The throughput measurement: one definition, and one window for every policy of a comparison.

A step is one LLM call plus its tool call; it completes when the tool returns. Two kinds of run,
two kinds of throughput, never compared with each other:

- **steady** (a horizon run): a closed loop that never drains (thundersim.sim.driver recycles the
  trace's programs, each reuse a fresh program with its own id) or an open loop of fixed
  arrivals, stopped at `horizon_s`. Throughput = steps completed in [warmup_s, horizon_s] / its
  length. The window is fixed before the run, so it is the same for every policy given the same
  horizon and warm-up: work a policy pushes past the horizon is simply not done, and work it
  does inside the window counts whoever started it.
- **whole_run** (a finite trace run to its end): throughput = steps / makespan, ramp-up and
  drain included.

The earlier definition (first program finish -> last program start, per run) let each run pick
its own window: a policy that finished short programs first exhausted the trace early and left
its expensive work to the uncounted drain (ToolOrchestra at 48: +25 % "steady" for stp at equal
makespan). It is gone; `tests/test_window.py` shows a policy built to exploit it gains nothing
under this one.

A horizon run also reports its whole-run rate (every step completed / the run's length, warm-up
included) so that both exist side by side; `throughput_steps_per_min` is the headline of its
kind and `throughput_metric` says which kind it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

STEADY = "steady"
WHOLE_RUN = "whole_run"

# A horizon run's warm-up when none is given: a quarter of the horizon. Named estimate: long
# enough, on the bundled traces, for the first wave of programs (which all start at t = 0 with
# short contexts) to have finished and been replaced at least once (swe at 96: mean program
# lifetime ~740 s; a 7,200 s horizon gives 1,800 s of warm-up).
DEFAULT_WARMUP_FRACTION = 0.25  # provenance: estimate — see the comment above


def default_warmup(horizon_s: float) -> float:
    return DEFAULT_WARMUP_FRACTION * horizon_s


def check_window(horizon_s: float | None, warmup_s: float | None) -> None:
    if horizon_s is None:
        if warmup_s is not None:
            raise ValueError(
                "a warm-up needs a horizon (--horizon): a finite run is measured whole"
            )
        return
    if horizon_s <= 0:
        raise ValueError(f"horizon must be > 0 s, got {horizon_s}")
    if warmup_s is not None and not 0 <= warmup_s < horizon_s:
        raise ValueError(f"warm-up must be in [0, horizon) = [0, {horizon_s}), got {warmup_s}")


def measure(
    done_t: Iterable[float],
    end_s: float,
    horizon_s: float | None,
    warmup_s: float | None,
) -> dict:
    """The summary's throughput keys from the completion times of every step.

    end_s: when the run ended (the last program's finish for a finite run; the horizon, or an
    interruption, for a horizon run)."""
    t = np.asarray(list(done_t), dtype=float)
    whole = 60.0 * t.size / end_s if end_s > 0 else 0.0
    if horizon_s is None:
        return {
            "throughput_steps_per_min": whole,
            "throughput_metric": WHOLE_RUN,
            "throughput_window_s": [0.0, end_s],
            "throughput_steady_steps_per_min": None,
            "throughput_whole_run_steps_per_min": whole,
        }
    w0 = default_warmup(horizon_s) if warmup_s is None else warmup_s
    inside = int(((t >= w0) & (t <= horizon_s)).sum())
    steady = 60.0 * inside / (horizon_s - w0)
    return {
        "throughput_steps_per_min": steady,
        "throughput_metric": STEADY,
        "throughput_window_s": [w0, horizon_s],
        "throughput_steady_steps_per_min": steady,
        "throughput_whole_run_steps_per_min": whole,
    }


def describe(summary: Mapping) -> str:
    """'steady [1,800-7,200 s]' or 'whole run (0-2,271 s)': what a table's throughput is."""
    w0, w1 = summary["throughput_window_s"]
    if summary["throughput_metric"] == STEADY:
        return f"steady over [{w0:,.0f}, {w1:,.0f}] s of a never-draining run"
    return f"whole run: all steps / makespan ({w1:,.0f} s)"


def definition(summary: Mapping) -> tuple:
    """What must be equal for two runs' throughputs to be compared: the kind, and for a steady
    run its window (a finite run's window is its own makespan by definition)."""
    if summary["throughput_metric"] == STEADY:
        return (STEADY, *(round(float(x), 6) for x in summary["throughput_window_s"]))
    return (WHOLE_RUN,)


class IncomparableRuns(ValueError):
    """Runs put side by side whose throughputs were measured differently."""


def check_comparable(summaries: Iterable[Mapping], what: str = "runs") -> tuple:
    """Raise IncomparableRuns unless every summary has the same throughput definition; returns
    that definition."""
    seen: dict[tuple, list[str]] = {}
    for s in summaries:
        label = f"{s.get('policy', '?')}@{s.get('concurrency', '?')}"
        seen.setdefault(definition(s), []).append(label)
    if len(seen) > 1:
        parts = "; ".join(f"{d}: {', '.join(v[:4])}" for d, v in seen.items())
        raise IncomparableRuns(
            f"{what} measure throughput differently and cannot be put side by side ({parts}); "
            "give every run the same --horizon/--warmup, or none"
        )
    return next(iter(seen), (WHOLE_RUN,))


def window_columns(summary: Mapping) -> dict:
    """The flat-row columns of a summary's window, as compare and sweep tables carry them."""
    start, end = summary["throughput_window_s"]
    return {"throughput_window_start_s": start, "throughput_window_end_s": end}


def check_table(rows: Iterable[Mapping], what: str = "rows") -> tuple:
    """check_comparable for table rows (compare or sweep): each row has throughput_metric and
    the window_columns."""
    return check_comparable(
        (
            {
                "policy": r.get("policy"),
                "concurrency": r.get("concurrency"),
                "throughput_metric": r["throughput_metric"],
                "throughput_window_s": [
                    r["throughput_window_start_s"],
                    r["throughput_window_end_s"],
                ],
            }
            for r in rows
        ),
        what,
    )
