"""continuum: the Continuum baseline (KV time-to-live across tool calls).

After a call that ends in a tool call, Continuum predicts how long the tool will take from that
tool's history (the mean of every duration seen for that tool name) and, when the prediction is
at most the pin threshold (a tool never seen predicts 0 s), pins the program's KV on its engine
for a fixed TTL, so that the next call finds it even under memory pressure. Programs are
admitted on arrival only when their context fits beside the ACTIVE ones (a waiting program is
admitted FIFO as others finish), onto the replica with the most room by that same accounting; an
admitted program is never paused and stays on its replica. (Request-level load signals cannot
place it: at arrival it has no call yet.)

What Continuum's published code does (Li et al., arXiv 2511.02230; the authors' preview release
github.com/Hanchenli/vllm-continuum, commit 316a587, whose README says it runs "without the
estimation in the paper"; read in vllm/v1/core/estimate_with_func.py and
vllm/v1/core/sched/scheduler.py of its public forks, e.g. Whrlicht/vllm-continuum):
- FIXED_THRESHOLD_CONTINUUM = 2.0 s. After a call that emits a tool call, the KV is pinned iff
  the tool's predicted time is <= 2 s, and then for a TTL of exactly 2 s (the threshold itself,
  not the prediction); slower tools are not pinned at all.
- The prediction is the plain mean of every observed duration of that tool, across programs
  (not a moving average), keyed by the first word of the bash command (ls, git, python, ...).
  A tool never seen before predicts 0 s, so it is pinned.
- A pin expires when its TTL has passed AND the program has no request waiting; when the
  running queue cannot make room otherwise, the scheduler releases a pin (the latest-ending
  one first).
- The paper's own estimator (a TTL maximising P(tool done by tau) x benefit - tau over an
  empirical CDF, with an exponential prior at cold start) is not in that release.
The pin rule here is the release's: threshold and TTL both 2 s, a plain mean per tool, a tool
with no history pinned. Deliberate differences, with their reasons: thundersim's traces name
tools coarsely ("bash", not the command), so one mean covers fast and slow commands alike (the
swe trace's bash mean is about 5 s, so after warm-up bash calls are rarely pinned, as a release
that saw only "bash" would do); a pin here ends at its TTL or when the program's next call
starts, and the engine never breaks one to make room (the release releases the latest-ending pin
when its running queue cannot progress); and the release schedules inside vLLM with job-level
FCFS (a program's requests ordered by its first arrival), which a policy above the engine cannot
express, so this port stands in for it with FIFO admission of programs whose context fits.
"""

from __future__ import annotations

from collections import deque

from thundersim.core.policy import (
    ActiveLoads,
    ClusterView,
    Decision,
    Pin,
    Policy,
    PolicyOptions,
    Restore,
    most_room,
)
from thundersim.core.program import ProgramView, Status
from thundersim.policies.registry import register


@register
class Continuum(Policy):
    """Continuum: pin KV for 2 s after a tool call predicted (per-tool mean) to take <= 2 s."""

    name = "continuum"
    params = {
        # Pin only when the predicted tool time is at most this.
        # provenance: spec — FIXED_THRESHOLD_CONTINUUM = 2.0 s in Continuum's released code
        # (github.com/Hanchenli/vllm-continuum, vllm/v1/core/estimate_with_func.py); was 10 s, which
        # had no source
        "pin_threshold_s": 2.0,
        # How long a pin holds the KV.
        # provenance: spec — the released code pins for FIXED_THRESHOLD_CONTINUUM = 2.0 s, the
        # threshold itself (set_up_pin in vllm/v1/core/estimate_with_func.py)
        "ttl_s": 2.0,
    }

    def __init__(self, options: PolicyOptions | None = None):
        super().__init__(options)
        if self.settings["ttl_s"] <= 0:
            raise ValueError("continuum: need ttl_s > 0")
        self._seen: dict[str, list[float]] = {}  # tool name -> (sum, count) of its seconds
        self.predicted: dict[str, float] = {}  # tool name -> mean of every duration seen
        self._tool_start: dict[str, tuple[str, float]] = {}  # program -> (tool, start)
        self._fifo: deque[str] = deque()
        self.loads = ActiveLoads(self.cost)

    def cost(self, p: ProgramView) -> float:
        return p.context_tokens + self.options.reserve_tokens

    # ---- admission ---------------------------------------------------------------------
    def on_arrival(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        self._fifo.append(program.id)
        return self._admit(view)

    def on_finish(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        self._tool_start.pop(program.id, None)
        return self._admit(view)

    def _admit(self, view: ClusterView) -> list[Decision]:
        loads = self.loads(view)
        decisions: list[Decision] = []
        while self._fifo:
            p = view.programs.get(self._fifo[0])
            if p is None or p.status is not Status.WAITING:
                self._fifo.popleft()
                continue
            target = most_room(view.backends(), loads)
            if target is None:
                break
            b = target.index
            if loads[b] + self.cost(p) > target.capacity_tokens and loads[b] > 0:
                break
            decisions.append(Restore(p.id, b))
            loads[b] += self.cost(p)
            self._fifo.popleft()
        return decisions

    # ---- time-to-live --------------------------------------------------------------------
    def on_response(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        tool = program.current_tool
        if not tool:
            return []  # no tool follows: nothing will come back for this KV
        # Whether this was the program's last call is unknown (a live agent does not announce
        # it): a pin after it is dropped when the program finishes (Cluster.finish).
        self._tool_start[program.id] = (tool, view.now)
        guess = self.predicted.get(tool, 0.0)  # never seen: 0 s, so it is pinned (the release)
        if guess > self.settings["pin_threshold_s"]:
            return []
        return [Pin(program.id, self.settings["ttl_s"])]

    def on_request(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        started = self._tool_start.pop(program.id, None)
        if started is not None:
            tool, t0 = started
            acc = self._seen.setdefault(tool, [0.0, 0])
            acc[0] += view.now - t0
            acc[1] += 1
            self.predicted[tool] = acc[0] / acc[1]
        return []
