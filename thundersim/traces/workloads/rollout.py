"""An RL-rollout workload: groups of mini-SWE-agent samples of one SWE-bench task.

RL training (GRPO and kin) samples several trajectories of each task and compares them. The
rollout phase therefore runs groups: G programs that share the system prompt *and* the task
statement, then diverge. Each group gets its own prefix id whose tokens are the system prompt
plus the task statement, so the simulator can share that KV within the group. (Schema v1
has one prefix per program, so the system prompt's KV is not shared across groups: 18 extra
copies of 3,000 tokens for the bundled 144-program trace, ≈0.4% of its peak KV.)

Per-step statistics are mini-SWE-agent's (swe.py's constants, imported): the same turn,
observation, output and tool distributions, step cap 135, 2 GB sandboxes. What a group
shares beyond the prompt — ASSUMPTION — is its task's difficulty and its repository's
verbosity: half of the variance of log(turns) is per task, half per sample, and swe.py's
per-program verbosity factor is per task, so the marginal distributions stay swe.py's.

Every parameter cites /work/shared/WORKLOADS.md (WORKLOADS), /work/shared/PAPER.md (PAPER),
swe.py (which cites its own sources), or says ASSUMPTION.

Randomness: one stream per group and one per program, so
``generate(n, seed)[:k] == generate(k, seed)`` (a partial last group is a prefix of the full).

    thundersim trace gen --workload rollout --programs 144 --seed 0 > traces/rollout.jsonl
"""

from __future__ import annotations

import math

import numpy as np

from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

from . import swe
from .distributions import Lognormal, draw_tokens, seconds

WORKLOAD = "rollout"

# --- groups ---
# ASSUMPTION: 8 samples per task, a common GRPO group size; with PAPER's N = 144 concurrent
# rollout programs that is 18 tasks per batch (WORKLOADS: "several samples of one task share
# the task prompt").
GROUP_SIZE = 8  # provenance: estimate — a common GRPO group size; the paper does not give one

# --- turns: swe.py's lognormal (WORKLOADS corpus p50 36 / p95 87), its variance of log(turns)
# split evenly (ASSUMPTION) between the task (shared by the group) and the sample.
TURNS_MEDIAN = swe.TURNS_MEDIAN
# provenance: estimate — half the log-variance per task
TASK_TURNS_SIGMA = swe.TURNS_SIGMA / math.sqrt(2)
SAMPLE_TURNS_SIGMA = swe.TURNS_SIGMA / math.sqrt(2)  # provenance: estimate — and half per sample
TURNS_MAX = swe.TURNS_MAX  # PAPER / WORKLOADS: mini-SWE-agent's step limit, 135
TURNS_MIN = swe.TURNS_MIN

# --- the shared prefix: system prompt + task statement ---
SYSTEM_PROMPT_TOKENS = swe.SYSTEM_PROMPT_TOKENS  # WORKLOADS: a few thousand tokens
TASK_TOKENS = Lognormal(swe.TASK_TOKENS_MEDIAN, swe.TASK_TOKENS_SIGMA)
TASK_TOKENS_MAX = swe.TASK_TOKENS_MAX
# The first call adds only the chat template's assistant header after the shared prefix
# (ASSUMPTION: 5 tokens, e.g. "<|im_start|>assistant\n").
FIRST_INPUT_TOKENS = 5  # provenance: estimate — the chat template's assistant header

# --- per step: swe.py's distributions ---
OBS_TOKENS = Lognormal(swe.OBS_TOKENS_MEDIAN, swe.OBS_TOKENS_SIGMA)
OUTPUT_TOKENS = Lognormal(swe.OUTPUT_TOKENS_MEDIAN, swe.OUTPUT_TOKENS_SIGMA)
BASH_S = Lognormal(swe.BASH_S_MEDIAN, swe.BASH_S_SIGMA)
EDITOR_S = Lognormal(swe.EDITOR_S_MEDIAN, swe.EDITOR_S_SIGMA)
SUBMIT_S = Lognormal(swe.SUBMIT_S_MEDIAN, swe.SUBMIT_S_SIGMA)

# --- sandbox: one per sample (each trajectory needs its own repository state), swe.py's ---
ENV_PREP_S = Lognormal(swe.ENV_PREP_S_MEDIAN, swe.ENV_PREP_S_SIGMA)
ENV_DISK_BYTES = Lognormal(swe.ENV_DISK_BYTES_MEDIAN, swe.ENV_DISK_BYTES_SIGMA)
ENV_PORTS = swe.ENV_PORTS

# --- arrivals ---
# ASSUMPTION: the trainer submits a whole rollout batch at once, so every program arrives at
# t = 0 (PAPER: N = 144 programs run concurrently); closed-loop replay ignores it anyway.
ARRIVAL_S = 0.0  # provenance: estimate — the trainer submits the whole rollout batch at once

_GROUP_STREAM = 0  # provenance: definition — a random-stream label
_PROGRAM_STREAM = 1  # provenance: definition — a random-stream label


def prefix_id(group: int) -> str:
    return f"{WORKLOAD}-task-{group:03d}"


def _group(group: int, seed: int) -> tuple[int, float, float]:
    """(task tokens, log-turns offset, verbosity) of one group's task."""
    rng = np.random.default_rng([seed, _GROUP_STREAM, group])
    task = draw_tokens(rng, TASK_TOKENS, TASK_TOKENS_MAX)
    turns_offset = float(rng.normal(0.0, TASK_TURNS_SIGMA))
    verbosity = Lognormal(1.0, swe.PROGRAM_VERBOSITY_SIGMA).draw(rng)
    return task, turns_offset, verbosity


def _program(index: int, group: int, task: tuple[int, float, float], seed: int) -> ProgramSpec:
    task_tokens, turns_offset, verbosity = task
    rng = np.random.default_rng([seed, _PROGRAM_STREAM, index])
    turns = TURNS_MEDIAN * math.exp(turns_offset + float(rng.normal(0.0, SAMPLE_TURNS_SIGMA)))
    turns = max(TURNS_MIN, min(TURNS_MAX, round(turns)))
    prefix_tokens = SYSTEM_PROMPT_TOKENS + task_tokens

    steps: list[StepSpec] = []
    context = prefix_tokens
    for k in range(turns):
        if k == 0:
            new = FIRST_INPUT_TOKENS
        else:
            new = draw_tokens(rng, OBS_TOKENS, swe.OBS_TOKENS_MAX, scale=verbosity)
        out = draw_tokens(rng, OUTPUT_TOKENS, swe.OUTPUT_TOKENS_MAX)
        if steps and context + new + out > swe.MAX_CONTEXT_TOKENS:
            break  # as swe.py: the run ends at the last call that fits the window
        context += new + out
        if rng.random() < swe.EDITOR_FRACTION:
            tool, tool_s = "editor", EDITOR_S.draw(rng)
        else:
            tool, tool_s = "bash", BASH_S.draw(rng)
        steps.append(StepSpec(new, out, tool, seconds(tool_s, swe.TOOL_S_MAX)))
    last = steps[-1]  # the last action is the submission, as in swe.py
    steps[-1] = StepSpec(
        last.input_tokens,
        last.output_tokens,
        "submit",
        seconds(SUBMIT_S.draw(rng), swe.TOOL_S_MAX),
    )
    env = EnvSpec(
        prep_s=round(ENV_PREP_S.draw(rng), 3),
        disk_bytes=round(ENV_DISK_BYTES.draw(rng)),
        ports=ENV_PORTS,
    )
    return ProgramSpec(
        id=f"{WORKLOAD}-{index:04d}",
        workload=WORKLOAD,
        arrival_s=ARRIVAL_S,
        prefix_id=prefix_id(group),
        prefix_tokens=prefix_tokens,
        env=env,
        steps=tuple(steps),
    )


def generate(n_programs: int, seed: int) -> list[ProgramSpec]:
    """`n_programs` rollout programs in groups of GROUP_SIZE (program i is in group
    i // GROUP_SIZE), deterministic in `seed`."""
    if n_programs < 1:
        raise ValueError(f"n_programs must be at least 1, got {n_programs}")
    groups = [_group(g, seed) for g in range((n_programs - 1) // GROUP_SIZE + 1)]
    return [_program(i, i // GROUP_SIZE, groups[i // GROUP_SIZE], seed) for i in range(n_programs)]
