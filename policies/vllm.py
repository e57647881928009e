"""vllm (alias fcfs): the request-level baseline. Every call goes straight to an engine."""

from __future__ import annotations

from thundersim.core.policy import ClusterView, Decision, Policy, Restore, Route
from thundersim.core.program import ProgramView, Status
from thundersim.policies.registry import make_router, register


@register
class VLLM(Policy):
    """Request-level FCFS (vLLM as is): admit all at once, each call routed, engine LRU decides."""

    name = "vllm"
    aliases = ("fcfs",)

    def __init__(self, options=None):
        super().__init__(options)
        self.router = make_router(self.options.router)

    def on_request(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        # Request-level: every call is routed on its own when it is ready, like any request;
        # the first one also admits the program (no admission control at all).
        if view.n_backends == 1 and program.status is Status.ACTIVE:
            return []
        backend = self.router.route(view, program)
        if backend is None:  # every replica is down: the call waits in the Cluster
            return []
        if program.status is not Status.ACTIVE:  # first call, or its backend went down
            return [Restore(program.id, backend)]
        return [Route(program.id, backend)]

    def on_finish(self, view: ClusterView, program: ProgramView) -> list[Decision]:
        self.router.forget(program)
        return []
