"""stp: ThunderAgent's program-aware policy (the paper's Space-Time Product scheduler).

Every dt (the tick) and whenever memory frees up, per backend L with KV capacity C:
- memory held by L's ACTIVE programs is M = sum of c_p (+ a small reserve per program), where a
  program in a tool call counts c_p * f(t), f the decay (f(0) = 1, f -> 0) of its time acting;
- thrashing if M > lambda_max * C: pause programs until M <= lambda_max * C, choosing victims
  by S_pause = 1/c + 1[acting]: acting before reasoning, then shortest first (the paper's
  greedy answer to min sum c^2 s.t. sum c >= excess);
- restore while M < lambda_min * C and the program fits under lambda_max * C, by
  S_restore = 1/c + 1[reasoning]: paused programs with a call ready first, then new programs,
  then paused acting ones, each shortest first, onto the backend with the most free room. The
  paused queue is global: a program may come back on any backend (its cache is recomputed there).
  With `--param sticky=1` a program only comes back on the backend it last ran on (the
  session-affinity baseline the global queue is measured against).

Variants override one hook each: `victims` (stp_exact), `restore_order`/`blocks_queue`
(stp_fair), `decay_of` (stp_tool).
"""

from __future__ import annotations

import math

from thundersim.core.policy import (
    ClusterView,
    DecayKind,
    Decision,
    Pause,
    Policy,
    PolicyOptions,
    Restore,
    active_loads,
    most_room,
    parse_decay,
)
from thundersim.core.program import Phase, ProgramView, Status
from thundersim.policies.registry import register


@register
class STP(Policy):
    """ThunderAgent: watermarks every dt, pause acting/shortest first, restore reasoning/shortest first."""

    name = "stp"
    # provenance: spec — off (0): the paper's global paused queue; 1 is our session-affinity
    # baseline, not the paper's method
    params = {"sticky": 0.0}

    def __init__(self, options: PolicyOptions | None = None):
        super().__init__(options)
        o = self.options
        self.tick_interval = o.tick_interval
        self.decay_kind, self.decay_arg = parse_decay(o.decay)
        self.sticky = bool(self.settings["sticky"])

    # ---- the cost model ----------------------------------------------------------------
    def decay(self, acting_s: float) -> float:
        """f(t): the share of an acting program's context still counted after t seconds."""
        if self.decay_kind is DecayKind.POW:
            return self.decay_arg ** (-acting_s / self.tick_interval)
        if self.decay_kind is DecayKind.EXP:
            return math.exp(-self.decay_arg * acting_s)
        return 1.0

    def decay_of(self, p: ProgramView, now: float) -> float:
        return self.decay(now - p.acting_since)

    def cost(self, p: ProgramView, now: float) -> float:
        """Tokens of KV the program is counted as holding: its context, or the prompt of its
        ready call (known once the agent has sent it), plus the reserve."""
        c = max(p.context_tokens, p.next_prompt_tokens) + self.options.reserve_tokens
        if p.phase is Phase.ACTING and p.acting_since is not None:
            c *= self.decay_of(p, now)
        return c

    def loads(self, view: ClusterView) -> list[float]:
        now = view.now
        return active_loads(view, lambda p: self.cost(p, now))

    # ---- callbacks -----------------------------------------------------------------------
    def on_tick(self, view: ClusterView) -> list[Decision]:
        loads = self.loads(view)
        decisions: list[Decision] = self.pause_excess(view, loads)
        decisions += self.restore(view, loads)
        return decisions

    def on_request(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        if program.status is Status.ACTIVE:
            return []
        return self.restore(view, self.loads(view))

    def on_finish(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        return self.restore(view, self.loads(view))

    # ---- pause ---------------------------------------------------------------------------
    def pause_excess(self, view: ClusterView, loads: list[float]) -> list[Decision]:
        now = view.now
        decisions: list[Decision] = []
        for b in view.backends():
            limit = self.options.lambda_max * b.capacity_tokens
            if loads[b.index] <= limit:
                continue
            active = [
                p
                for p in view.programs.values()
                if p.status is Status.ACTIVE and p.backend == b.index
            ]
            for p in self.victims(active, loads[b.index] - limit, now):
                decisions.append(Pause(p.id))
                loads[b.index] -= self.cost(p, now)
        return decisions

    def victims(self, active: list[ProgramView], excess: float, now: float) -> list[ProgramView]:
        """Greedy: highest S_pause first (acting, then shortest) until the excess is covered."""
        order = sorted(
            active,
            key=lambda p: (p.phase is not Phase.ACTING, p.context_tokens, p.index),
        )
        chosen, freed = [], 0.0
        for p in order:
            if freed >= excess:
                break
            chosen.append(p)
            freed += self.cost(p, now)
        return chosen

    # ---- restore -------------------------------------------------------------------------
    def candidates(self, view: ClusterView) -> list[ProgramView]:
        """Programs that could be (re)admitted: paused ones, and new ones with a call ready."""
        return [
            p
            for p in view.programs.values()
            if p.status is Status.PAUSED or (p.status is Status.WAITING and p.pending)
        ]

    def restore_order(self, view: ClusterView) -> list[ProgramView]:
        """By S_restore: paused with a call ready, then new, then paused acting; shortest
        first within each class."""

        def rank(p: ProgramView) -> int:
            if p.status is Status.WAITING:
                return 1
            return 0 if p.phase is Phase.REASONING else 2

        return sorted(
            self.candidates(view),
            key=lambda p: (rank(p), max(p.context_tokens, p.next_prompt_tokens), p.index),
        )

    def blocks_queue(self, p: ProgramView, now: float) -> bool:
        """Whether a candidate that does not fit stops the restore pass (shortest-first: no,
        a smaller one further down may fit)."""
        return False

    def restore(self, view: ClusterView, loads: list[float]) -> list[Decision]:
        o = self.options
        backends = view.backends()
        decisions: list[Decision] = []
        now = view.now
        for p in self.restore_order(view):
            if self.sticky and p.last_backend is not None:
                b = backends[p.last_backend]
                if not b.alive:
                    b = most_room(backends, loads, o.lambda_max)
            else:
                b = most_room(backends, loads, o.lambda_max)
            if b is None:
                break
            if loads[b.index] >= o.lambda_min * b.capacity_tokens:
                if self.sticky:
                    continue  # its home is full; other programs' homes may not be
                break  # the backend with the most room is at its low watermark
            c = self.cost(p, now)
            room = o.lambda_max * b.capacity_tokens - loads[b.index]
            if c > room and loads[b.index] > 0:
                # An empty backend takes any program: otherwise one whose reserve tips it over
                # capacity never runs.
                if self.blocks_queue(p, now):
                    break
                continue  # a smaller program further down may still fit
            decisions.append(Restore(p.id, b.index))
            loads[b.index] += c
        return decisions
