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
from thundersim.conformance.old_behaviours import OLD_BEHAVIOURS
from thundersim.conformance.sim_side import replay
from thundersim.conformance.workloads import WORKLOADS
from thundersim.engine_adapters.local import TINY_LLAMA

workloads = [m() for m in WORKLOADS.values()]
with tempfile.TemporaryDirectory() as tmp:
    rec = cmp.run_vllm_side(workloads, cmp.default_vllm_python(), Path(tmp), TINY_LLAMA)
rec.pop("__version__")


variants = {
    name: patch
    for name, patch in OLD_BEHAVIOURS.items()
    if patch[1] != "extend_shared"  # it shares nothing at all in the new pool: no numbers
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
