"""sticky: a program stays on the replica of its first call (session affinity)."""

from __future__ import annotations

from thundersim.core.policy import ClusterView, Router
from thundersim.core.program import ProgramView
from thundersim.policies.registry import register_router
from thundersim.policies.routers.least_loaded import load


@register_router
class Sticky(Router):
    """A program's calls all go to the replica its first call went to (least loaded then), as
    KV-aware session routers do."""

    name = "sticky"

    def __init__(self):
        self._home: dict[str, int] = {}

    def route(self, view: ClusterView, program: ProgramView) -> int | None:
        backends = view.backends()
        home = self._home.get(program.id)
        if home is not None and backends[home].alive:
            return home
        alive = [b for b in backends if b.alive]
        if not alive:
            return None
        home = min(alive, key=lambda b: (load(b), b.index)).index
        self._home[program.id] = home
        return home

    def forget(self, program: ProgramView) -> None:
        self._home.pop(program.id, None)
