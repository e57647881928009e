"""round_robin: calls go to the replicas in turn."""

from __future__ import annotations

from thundersim.core.policy import ClusterView, Router
from thundersim.core.program import ProgramView
from thundersim.policies.registry import register_router


@register_router
class RoundRobin(Router):
    """Each call to the next replica in turn, whatever it holds."""

    name = "round_robin"

    def __init__(self):
        self._next = 0

    def route(self, view: ClusterView, program: ProgramView) -> int | None:
        alive = [b.index for b in view.backends() if b.alive]
        if not alive:
            return None
        pick = alive[self._next % len(alive)]
        self._next += 1
        return pick
