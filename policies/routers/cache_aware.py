"""cache_aware: SGLang's router (sgl-router's cache-aware policy), on token counts.

SGLang's router keeps, per worker, an approximate radix tree of the requests it sent there and:
1. if the load is imbalanced (max - min > balance_abs_threshold AND max > min x
   balance_rel_threshold), sends the request to the least-loaded worker;
2. else, if the best prefix match covers more than cache_threshold of the request, sends it to
   the worker with that match;
3. else to the worker whose tree is smallest (the most room for a new prefix).
Here a program's context is a token sequence (shared prefix, then its own tokens), so the tree
reduces to: the longest context of this program sent to a worker, or its shared prefix if any
program with that prefix went there. Like the real router's tree, it tracks what was sent, not
what the engine still caches.
"""

from __future__ import annotations

from thundersim.core.policy import ClusterView, Router
from thundersim.core.program import ProgramView
from thundersim.policies.registry import register_router

# The defaults sgl-router's launcher published while RouterArgs lived in launch_router.py (what
# `python -m sglang_router.launch_router` started with unless told otherwise). Later releases
# moved RouterArgs to router_args.py with 0.3 / 64 / 1.5, also the defaults of today's SGLang
# Model Gateway (sgl-model-gateway/bindings/python/src/sglang_router/router_args.py); the Rust
# CacheAwareConfig::default() is 0.5 / 32 / 1.1.
# provenance: spec — sgl-router RouterArgs.cache_threshold = 0.5
# (sgl-router/py_src/sglang_router/launch_router.py; also Router(cache_threshold=0.50) in
# router.py): route to the best-matching worker when the match exceeds half the request
CACHE_THRESHOLD = 0.5
# provenance: spec — sgl-router RouterArgs.balance_abs_threshold = 32
# (sgl-router/py_src/sglang_router/launch_router.py): balance when max - min load > 32 ...
BALANCE_ABS_THRESHOLD = 32
# provenance: spec — ... and max load > min load x balance_rel_threshold = 1.0001 (sgl-router
# RouterArgs, sgl-router/py_src/sglang_router/launch_router.py; Router(balance_rel_threshold=
# 1.0001) in router.py)
BALANCE_REL_THRESHOLD = 1.0001


@register_router
class CacheAware(Router):
    """SGLang router: longest prefix match above 50 % unless load is imbalanced (its defaults)."""

    name = "cache_aware"

    def __init__(self):
        self._sent: list[dict[str, int]] = []  # per worker: program id -> tokens sent
        self._prefixes: list[set[str]] = []  # per worker: shared prefix ids sent
        self._size: list[int] = []  # per worker: tokens in its tree

    def _grow(self, n: int) -> None:
        while len(self._sent) < n:
            self._sent.append({})
            self._prefixes.append(set())
            self._size.append(0)

    def match(self, worker: int, program: ProgramView) -> int:
        sent = self._sent[worker].get(program.id, 0)
        if sent:
            return sent
        if program.prefix_id and program.prefix_id in self._prefixes[worker]:
            return program.prefix_tokens
        return 0

    def route(self, view: ClusterView, program: ProgramView) -> int | None:
        backends = [b for b in view.backends() if b.alive]
        if not backends:
            return None
        self._grow(view.n_backends)
        loads = {b.index: b.running + b.waiting for b in backends}
        hi, lo = max(loads.values()), min(loads.values())
        if hi - lo > BALANCE_ABS_THRESHOLD and hi > lo * BALANCE_REL_THRESHOLD:
            pick = min(loads, key=lambda i: (loads[i], i))
        else:
            need = max(program.next_prompt_tokens, program.context_tokens, 1)
            best = max(loads, key=lambda i: (self.match(i, program), -i))
            if self.match(best, program) / need > CACHE_THRESHOLD:
                pick = best
            else:
                pick = min(loads, key=lambda i: (self._size[i], i))
        self._remember(pick, program)
        return pick

    def _remember(self, worker: int, program: ProgramView) -> None:
        tokens = max(program.next_prompt_tokens, program.context_tokens)
        before = self._sent[worker].get(program.id, 0)
        if tokens > before:
            self._sent[worker][program.id] = tokens
            self._size[worker] += tokens - before
        if program.prefix_id and program.prefix_id not in self._prefixes[worker]:
            self._prefixes[worker].add(program.prefix_id)
            self._size[worker] += program.prefix_tokens

    def forget(self, program: ProgramView) -> None:
        # sgl-router evicts by tree size and age; a finished program's branch will never match
        # again, so dropping it keeps the tree sizes honest.
        for worker, sent in enumerate(self._sent):
            self._size[worker] -= sent.pop(program.id, 0)
