"""The engine's old divergences from vLLM, as replacements to patch in one at a time: the
differential test checks that each is caught (tests/test_vllm_conformance.py), and
experiments/conformance_old_behaviours.py measures how far each one diverged.

OLD_BEHAVIOURS: name -> (class, attribute, replacement); patch with setattr (or pytest's
monkeypatch.setattr) and put the original back after.
"""

from __future__ import annotations

from thundersim.sim.blocks import BlockPool
from thundersim.sim.scheduler import Scheduler

_real_admit = Scheduler._admit


def first_chunk_only(self, req, budget, reserved=0):
    """Admission when the first chunk's blocks fit, not the whole prompt's."""
    hit, hit_tokens = self.kv.get_computed_blocks(req)
    chunk = min(req.num_tokens - hit_tokens, budget)
    need = self.kv.num_new_blocks(req, chunk, hit) + reserved
    if chunk <= 0 or need > self.kv.num_free_blocks(hit):
        return None
    return hit, hit_tokens, chunk


def count_restarts_as_queries(self, req, budget):
    """Every admission counted as a first one (restarts' queries and hits included)."""
    restarted = req.usage.preemptions
    req.usage.preemptions = 0
    try:
        return _real_admit(self, req, budget)
    finally:
        req.usage.preemptions = restarted


def never_extend_shared(self, key, held, covered):
    """Shared-prompt blocks never join the chain when scheduled. (The pool no longer donates
    them at release either, so this shares nothing at all: a test of teeth, not the old
    engine's numbers.)"""
    return held


OLD_BEHAVIOURS = {
    "admission on the first chunk": (Scheduler, "_plan_admission", first_chunk_only),
    "restarts counted as queries and hits": (Scheduler, "_admit", count_restarts_as_queries),
    "prompt blocks never cached when scheduled": (BlockPool, "extend_shared", never_extend_shared),
}
