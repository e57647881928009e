"""lru: program-aware but naive. Pause the least recently active program; restore FIFO."""

from __future__ import annotations

from sortedcontainers import SortedList

from thundersim.core.policy import (
    ActiveLoads,
    ChangeFeed,
    ClusterView,
    Decision,
    Pause,
    Policy,
    PolicyOptions,
    Restore,
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
        self.loads = ActiveLoads(self.cost)
        # With a change feed: the restorable programs in FIFO order, re-keyed when they change.
        self._source = None
        self._feed: ChangeFeed | None = None
        self._queue = SortedList()
        self._qkey: dict[str, tuple] = {}
        self._views: dict[str, ProgramView] = {}

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
        loads = self.loads(view)
        decisions: list[Decision] = []
        for b in view.backends():
            excess = loads[b.index] - b.capacity_tokens
            if excess <= 0:
                continue
            # Least recently active first: the longest in a tool call, then the others.
            active = sorted(
                view.active_on(b.index),
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
        loads = loads if loads is not None else self.loads(view)
        backends = view.backends()
        decisions: list[Decision] = []
        for p in self._fifo(view):
            b = most_room(backends, loads)
            if b is None:
                break
            if loads[b.index] + self.cost(p) > b.capacity_tokens and loads[b.index] > 0:
                break  # FIFO: the head waits, nobody overtakes it
            decisions.append(Restore(p.id, b.index))
            loads[b.index] += self.cost(p)
        return decisions

    def _fifo(self, view: ClusterView):
        """The paused queue (PAUSED and ready WAITING programs) in FIFO order: a sort of them
        all, or with a change feed the kept order, each program re-keyed when it changes (its
        `_queued_at` is only set while it is ACTIVE or before it arrives in the queue)."""
        key = self._queued_at.get
        if self._source is not view.source:
            self._source = view.source
            self._feed = view.subscribe()
            self._queue.clear()
            self._qkey.clear()
            self._views.clear()
        if self._feed is None:
            return sorted(view.restorable(), key=lambda p: key(p.id, (0.0, p.index)))
        for p in self._feed.drain():
            old = self._qkey.pop(p.id, None)
            if old is not None:
                self._queue.remove(old)
                del self._views[p.id]
            if p.status is Status.PAUSED or (p.status is Status.WAITING and p.pending):
                k = (key(p.id, (0.0, p.index)), p.arrival_seq, p.id)
                self._queue.add(k)
                self._qkey[p.id] = k
                self._views[p.id] = p
        return [self._views[k[-1]] for k in self._queue]
