"""The engine model against vLLM's own scheduler, iteration by iteration (issue 13 part 1).

vLLM's v1 Scheduler + KVCacheManager (the vLLM that `make vllm` installs, in .venv-vllm) and
the simulator's Scheduler run the same request streams (thundersim.conformance.workloads);
every step must agree on the tokens scheduled per request, the admissions in order with their
prefix hits, the preemptions, the finishes, the queue lengths, the free and cached blocks and
the prefix-cache counters. Then the test re-introduces, one at a time, each divergence the
engine used to have, and checks that the comparison catches it: the test has teeth.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from thundersim.conformance import compare as cmp
from thundersim.conformance.old_behaviours import OLD_BEHAVIOURS
from thundersim.conformance.sim_side import replay
from thundersim.conformance.workloads import WORKLOADS, program_tokens
from thundersim.engine_adapters.local import TINY_LLAMA

VLLM_PYTHON = cmp.default_vllm_python()
needs_vllm = pytest.mark.skipif(VLLM_PYTHON is None, reason="no .venv-vllm (run `make vllm`)")
pytestmark = pytest.mark.xdist_group("vllm")


@pytest.fixture(scope="module")
def vllm_records():
    """vLLM's records of every workload, from one run of its scheduler."""
    workloads = [make() for make in WORKLOADS.values()]
    with tempfile.TemporaryDirectory() as tmp:
        records = cmp.run_vllm_side(workloads, VLLM_PYTHON, Path(tmp), TINY_LLAMA)
    assert records.pop("__version__") == "0.32.0"  # the version `make vllm` pins
    return {w.name: (w, records[w.name]) for w in workloads}


@needs_vllm
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_every_iteration_is_identical_to_vllms_scheduler(vllm_records, name):
    workload, vllm = vllm_records[name]
    result = cmp.compare(name, workload.description, vllm, replay(workload))
    assert result.steps_vllm > 50
    assert result.ok, cmp.report("0.32.0", [result])


@needs_vllm
def test_each_workload_exercises_what_it_is_named_for(vllm_records):
    """Measured on vLLM's side, so the workloads stay what they claim if someone edits them."""

    def steps(name):
        return vllm_records[name][1]

    def preemptions(name):
        return sum(len(r["preempted"]) for r in steps(name))

    def hits(name):
        return sum(r["prefix_cache"]["hits"] for r in steps(name))

    assert preemptions("shared_prompt") == 0 and hits("shared_prompt") > 0
    assert preemptions("preemption") >= 5
    assert any(a[2] for r in steps("preemption") for a in r["admitted"])  # restarts
    budget = vllm_records["long_prompts"][0].config.max_num_batched_tokens
    assert any(budget in r["scheduled"].values() for r in steps("long_prompts"))
    assert preemptions("long_prompts") > 0
    cap = vllm_records["max_num_seqs_cap"][0].config.max_num_seqs
    assert max(r["running"] for r in steps("max_num_seqs_cap")) == cap
    assert any(r["waiting"] and r["free_blocks"] > 100 for r in steps("max_num_seqs_cap"))
    # eviction between turns: some next turn hits less than its previous turn left cached
    workload, records = vllm_records["eviction_between_turns"]
    B = workload.config.block_size
    cached_after = {}  # request id of a next turn -> full blocks its predecessor computed
    for p in workload.programs:
        prev = None
        for i, prompt, output, _ in program_tokens(p):
            if prev is not None:
                cached_after[f"{p.id}/{i}"] = (prev - 1) // B * B
            prev = len(prompt) + len(output)
    hit = {a[0]: a[1] for r in records for a in r["admitted"] if not a[2]}
    assert any(hit[rid] < full for rid, full in cached_after.items())


# ---- the differential test catches each divergence the engine had -----------------------------


def _diverges(vllm_records, name) -> bool:
    workload, vllm = vllm_records[name]
    return not cmp.compare(name, "", vllm, replay(workload)).ok


@needs_vllm
@pytest.mark.parametrize(
    ("old", "name"),
    [
        ("prompt blocks never cached when scheduled", "shared_prompt"),
        ("admission on the first chunk", "long_prompts"),
        ("restarts counted as queries and hits", "preemption"),
    ],
)
def test_each_old_divergence_is_caught(vllm_records, monkeypatch, old, name):
    cls, attr, replacement = OLD_BEHAVIOURS[old]
    monkeypatch.setattr(cls, attr, replacement)
    assert _diverges(vllm_records, name)


# ---- no vLLM needed ------------------------------------------------------------------------------


def test_streams_name_the_blocks_the_simulator_assumes():
    """Programs on one shared prompt start with the same token ids; a next turn's prompt is its
    predecessor's prompt and output, then new tokens; a reset starts again from the prompt."""
    workload = WORKLOADS["shared_prompt"]()
    a, b = workload.programs[:2]
    ta, tb = list(program_tokens(a)), list(program_tokens(b))
    n = a.prefix_tokens
    assert ta[0][1][:n] == tb[0][1][:n] and ta[0][1][n] != tb[0][1][n]
    for (_, prompt, out, _), (_, nxt, _, _) in zip(ta, ta[1:], strict=False):
        assert nxt[: len(prompt) + len(out)] == prompt + out
    swe = WORKLOADS["swe_scaled"]()
    for p in swe.programs:
        turns = list(program_tokens(p))
        for (i, prompt, _, _), turn in zip(turns, p.turns, strict=True):
            if turn.reset and i:
                assert len(prompt) == p.prefix_tokens + turn.new_tokens


def test_a_difference_in_any_field_is_a_divergent_step():
    workload = WORKLOADS["max_num_seqs_cap"]()
    sim = replay(workload)
    assert cmp.compare("x", "", sim, sim).ok

    def perturbed(value):
        if isinstance(value, dict):  # one count off (scheduled tokens, prefix counters)
            key = next(iter(value))
            return {**value, key: value[key] + 1}
        return value + ["x"] if isinstance(value, list) else value + 1

    for field in cmp.FIELDS:
        changed = [dict(r) for r in sim]
        step = next(i for i, r in enumerate(sim) if r["scheduled"] and r["admitted"])
        changed[step][field] = perturbed(changed[step][field])
        result = cmp.compare("x", "", sim, changed)
        assert result.divergent == 1 and field in result.first
    assert not cmp.compare("x", "", sim, sim[:-1]).ok  # a missing step too


def test_a_workload_that_could_never_fit_is_refused():
    from dataclasses import replace

    workload = WORKLOADS["preemption"]()
    tiny = replace(workload, config=replace(workload.config, num_gpu_blocks=8))
    with pytest.raises(ValueError, match="preemption: .* needs .* usable blocks"):
        cmp.max_model_len(tiny)
