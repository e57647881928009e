"""least_loaded: vLLM's internal data-parallel balancer."""

from __future__ import annotations

from thundersim.core.policy import BackendView, ClusterView, Router
from thundersim.core.program import ProgramView
from thundersim.policies.registry import register_router

# vLLM's internal DP load balancer scores an engine by 4 x waiting + running requests (the weight
# of 4 makes a queued request count as more load than a running one).
# provenance: spec — vLLM's DPLBAsyncMPClient.get_core_engine_for_request
# (vllm/v1/engine/core_client.py): `score = waiting * 4 + running`, the engine with the lowest
# score wins (vLLM v1 through at least v0.26). vLLM 0.32 scores max(clients x in-flight,
# waiting + running) + 6 x waiting x max(0, KV usage - 0.5) instead; this router keeps the
# 4 x waiting + running form.
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
