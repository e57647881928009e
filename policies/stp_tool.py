"""stp_tool: STP with a tool-aware decay learned online.

The paper's decay f(t) = 2^(-t/dt) assumes tool times are memoryless and alike. Real tool times
are heavy-tailed and differ by tool (a file edit takes 0.2 s, a test run minutes). What the
scheduler should count for an acting program is how likely its KV is to be needed soon: the
probability that its tool, having run t seconds already, returns within the next `horizon_dt`
ticks. This policy estimates that hazard from the durations it has seen for that tool name:

    f(t) = P(T <= t + H | T > t) = (#{T_i in (t, t+H]}) / (#{T_i > t})

and falls back to the paper's decay until a tool has `min_samples` observations (or when no
observation is longer than t).
"""

from __future__ import annotations

import bisect

from thundersim.core.policy import ClusterView, Decision, PolicyOptions
from thundersim.core.program import ProgramView
from thundersim.policies.registry import register
from thundersim.policies.stp import STP


@register
class STPTool(STP):
    """STP whose decay is each tool's learned hazard: P(returns within H | running t)."""

    name = "stp_tool"
    # provenance: estimate — horizon one tick, 20 observations before trusting a tool's hazard, a
    # 2,000-observation sliding window: our own choices, not from a source
    params = {**STP.params, "horizon_dt": 1.0, "min_samples": 20.0, "window": 2000.0}

    def __init__(self, options: PolicyOptions | None = None):
        super().__init__(options)
        self.horizon = self.settings["horizon_dt"] * self.tick_interval
        self.samples: dict[str, list[float]] = {}  # tool -> sorted recent durations
        self._recent: dict[str, list[float]] = {}  # tool -> durations in arrival order
        self._started: dict[str, tuple[str, float]] = {}

    def decay_of(self, p: ProgramView, now: float) -> float:
        t = now - p.acting_since
        seen = self.samples.get(p.current_tool or "")
        if seen is None or len(seen) < self.settings["min_samples"]:
            return self.decay(t)
        n = len(seen)
        alive = n - bisect.bisect_right(seen, t)  # observations longer than t
        if alive == 0:
            return self.decay(t)
        ends_soon = bisect.bisect_right(seen, t + self.horizon) - (n - alive)
        return ends_soon / alive

    def on_response(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        if program.current_tool:
            self._started[program.id] = (program.current_tool, view.now)
        return []

    def on_request(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        started = self._started.pop(program.id, None)
        if started is not None:
            self._observe(*started, view.now)
        return super().on_request(view, program)

    def _observe(self, tool: str, t0: float, now: float) -> None:
        took = now - t0
        recent = self._recent.setdefault(tool, [])
        seen = self.samples.setdefault(tool, [])
        recent.append(took)
        bisect.insort(seen, took)
        if len(recent) > self.settings["window"]:  # a sliding window: tools change over a run
            old = recent.pop(0)
            del seen[bisect.bisect_left(seen, old)]
