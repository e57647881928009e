"""least_loaded: vLLM's internal data-parallel balancer."""

from __future__ import annotations

from policies.registry import register_router
from thundersim.policy import BackendView, ClusterView, Router
from thundersim.program import ProgramView

# vLLM's DP coordinator scores an engine by 4 x waiting + running requests (the weight of 4
# makes a queued request count as more load than a running one; vllm/v1/engine/core_client.py).
WAITING_WEIGHT = 4


def load(b: BackendView) -> int:
    return WAITING_WEIGHT * b.waiting + b.running


@register_router
class LeastLoaded(Router):
    """Each call to the replica with the lowest 4 x waiting + running (vLLM's DP balancer)."""

    name = "least_loaded"

    def route(self, view: ClusterView, program: ProgramView) -> int | None:
        alive = [b for b in view.backends() if b.alive]
        if not alive:
            return None
        return min(alive, key=lambda b: (load(b), b.index)).index
