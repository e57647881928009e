"""lru: program-aware but naive. Pause the least recently active program; restore FIFO."""

from __future__ import annotations

from thundersim.core.policy import (
    ClusterView,
    Decision,
    Pause,
    Policy,
    PolicyOptions,
    Restore,
    active_loads,
    most_room,
)
from thundersim.core.program import Phase, ProgramView, Status
from thundersim.policies.registry import register


@register
class LRU(Policy):
    """Program-aware LRU: under memory pressure pause the least recently active; restore FIFO."""

    name = "lru"

    def __init__(self, options: PolicyOptions | None = None):
        super().__init__(options)
        self.tick_interval = self.options.tick_interval
        self._queued_at: dict[str, tuple[float, int]] = {}  # FIFO order of the paused queue

    def cost(self, p: ProgramView) -> float:
        return p.context_tokens + self.options.reserve_tokens

    def on_arrival(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        self._queued_at[program.id] = (view.now, program.index)
        return []

    def on_request(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        return [] if program.status is Status.ACTIVE else self._restore(view)

    def on_finish(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        self._queued_at.pop(program.id, None)
        return self._restore(view)

    def on_tick(self, view: ClusterView) -> list[Decision]:
        loads = active_loads(view, self.cost)
        decisions: list[Decision] = []
        for b in view.backends():
            excess = loads[b.index] - b.capacity_tokens
            if excess <= 0:
                continue
            # Least recently active first: the longest in a tool call, then the others.
            active = sorted(
                (
                    p
                    for p in view.programs.values()
                    if p.status is Status.ACTIVE and p.backend == b.index
                ),
                key=lambda p: (
                    p.phase is not Phase.ACTING,
                    p.acting_since if p.acting_since is not None else view.now,
                    p.index,
                ),
            )
            for p in active:
                if excess <= 0:
                    break
                decisions.append(Pause(p.id))
                self._queued_at[p.id] = (view.now, p.index)
                excess -= self.cost(p)
                loads[b.index] -= self.cost(p)
        return decisions + self._restore(view, loads)

    def _restore(self, view: ClusterView, loads: list[float] | None = None) -> list[Decision]:
        loads = loads if loads is not None else active_loads(view, self.cost)
        backends = view.backends()
        queue = sorted(
            (
                p
                for p in view.programs.values()
                if p.status is Status.PAUSED or (p.status is Status.WAITING and p.pending)
            ),
            key=lambda p: self._queued_at.get(p.id, (0.0, p.index)),
        )
        decisions: list[Decision] = []
        for p in queue:
            b = most_room(backends, loads)
            if b is None:
                break
            if loads[b.index] + self.cost(p) > b.capacity_tokens and loads[b.index] > 0:
                break  # FIFO: the head waits, nobody overtakes it
            decisions.append(Restore(p.id, b.index))
            loads[b.index] += self.cost(p)
        return decisions
