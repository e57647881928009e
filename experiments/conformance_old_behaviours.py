"""The engine's old behaviours put back one at a time on the conformance workloads: how far each
diverged from vLLM's own scheduler (issue 13's closing note).

    python experiments/conformance_old_behaviours.py     # needs `make vllm`

Prints a table: per old behaviour and workload, the divergent steps and both sides' prefix-hit
tokens and preemptions. (Caching prompt blocks only at finish cannot be put back alone: the pool
no longer donates at release, so that variant shares nothing at all.)
"""

import tempfile
from pathlib import Path

from thundersim.conformance import compare as cmp
from thundersim.conformance.sim_side import replay
from thundersim.conformance.workloads import WORKLOADS
from thundersim.engine_adapters.local import TINY_LLAMA
from thundersim.sim import scheduler as sm

workloads = [m() for m in WORKLOADS.values()]
with tempfile.TemporaryDirectory() as tmp:
    rec = cmp.run_vllm_side(workloads, cmp.default_vllm_python(), Path(tmp), TINY_LLAMA)
rec.pop("__version__")


def first_chunk_only(self, req, budget, reserved=0):
    hit, hit_tokens = self.kv.get_computed_blocks(req)
    chunk = min(req.num_tokens - hit_tokens, budget)
    need = self.kv.num_new_blocks(req, chunk, hit) + reserved
    if chunk <= 0 or need > self.kv.num_free_blocks(hit):
        return None
    return hit, hit_tokens, chunk


real_admit = sm.Scheduler._admit


def count_all(self, req, budget):
    p = req.usage.preemptions
    req.usage.preemptions = 0
    try:
        return real_admit(self, req, budget)
    finally:
        req.usage.preemptions = p


variants = {
    "admission on the first chunk": (sm.Scheduler, "_plan_admission", first_chunk_only),
    "restarts counted as queries/hits": (sm.Scheduler, "_admit", count_all),
}
print(
    "| old behaviour | workload | divergent steps | hit tokens vLLM / sim | preemptions vLLM / sim |"
)
print("|---|---|---|---|---|")
for label, (cls, name, fn) in variants.items():
    orig = getattr(cls, name)
    setattr(cls, name, fn)
    try:
        for w in workloads:
            try:
                r = cmp.compare(w.name, "", rec[w.name], replay(w))
            except Exception as exc:  # the old behaviour can break the new invariants
                print(f"| {label} | {w.name} | (stopped: {type(exc).__name__}) | | |")
                continue
            if r.ok:
                continue
            t = r.totals
            print(
                f"| {label} | {w.name} | {r.divergent} of {r.steps_vllm} | {t['vllm_hits']} / {t['sim_hits']} | {t['vllm_preemptions']} / {t['sim_preemptions']} |"
            )
    finally:
        setattr(cls, name, orig)
