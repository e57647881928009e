"""A mini-SWE-agent-like coding workload, parameterised from published statistics.

Each program is one SWE-bench task: a shared system prompt, the issue text, then a loop of
"think + one shell command" calls, each followed by the command's observation, ending in a
submit. No real trace can be downloaded here, so every distribution below is a lognormal
whose parameters cite /work/shared/WORKLOADS.md (marked WORKLOADS) or PAPER.md (PAPER), or is
marked ASSUMPTION where no source gives the number. Fits are to two or three published
quantiles; expect the shape, not the exact tails, of the real corpus.

Randomness: one stream for arrivals and one per program, all derived from the seed, so
``generate(n, seed)[:k] == generate(k, seed)`` and a trace can grow without reshuffling.

    python -m thundersim.traces.workloads.swe --programs 300 --seed 0 > traces/swe.jsonl
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from thundersim.traces.loader import dump_trace
from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

from .distributions import poisson_arrivals, seconds

WORKLOAD = "swe"

# z-scores of the standard normal, used to turn published quantiles into lognormal sigmas.
_Z95 = 1.6449  # provenance: definition — z-score of the standard normal at 0.95
_Z99 = 2.3263  # provenance: definition — z-score of the standard normal at 0.99

# --- turns (LLM calls) per program ---
# WORKLOADS, 15K-session coding corpus: turns p50 36, p95 87 (mean 41, max 120).
# Lognormal through p50 and p95: sigma = ln(87/36)/z95 ≈ 0.54; its mean, 36·e^(σ²/2) ≈ 41.6,
# agrees with the corpus mean of 41, a check that the lognormal shape fits.
TURNS_MEDIAN = 36  # provenance: measured — WORKLOADS, 15K-session coding corpus: turns p50 36
# provenance: measured — WORKLOADS, 15K-session coding corpus: turns p95 87 (through p50 36)
TURNS_SIGMA = math.log(87 / 36) / _Z95
# provenance: spec — PAPER / WORKLOADS: mini-SWE-agent's step limit in the paper's runs (a setting
# of the harness as the paper ran it)
TURNS_MAX = 135
# ASSUMPTION: look at the repo, make one edit, submit — fewer is not a session.
# provenance: estimate — a minimal session (look, edit, submit); no source gives a minimum
TURNS_MIN = 3

# --- shared system prompt ---
# WORKLOADS: "a few thousand tokens", shared by the workload.
# provenance: estimate — WORKLOADS says only "a few thousand tokens"; 3000 is a guess within that
SYSTEM_PROMPT_TOKENS = 3000
SYSTEM_PROMPT_ID = "swe-system"

# --- first call: the task (issue) description ---
# ASSUMPTION: median 1500 tokens, sigma 0.6 (SWE-bench issues range from a few lines to
# pasted tracebacks); capped so one outlier cannot dominate a small trace.
# provenance: estimate — SWE-bench issue length, no published quantiles used
TASK_TOKENS_MEDIAN = 1500
# provenance: estimate — spread of issue lengths (a few lines to tracebacks)
TASK_TOKENS_SIGMA = 0.6
# provenance: estimate — a cap so one outlier cannot dominate a small trace
TASK_TOKENS_MAX = 16_000

# --- later calls: the previous command's observation ---
# Shape: WORKLOADS, aiperf's coding-session manifest, new tokens per turn median 4000 /
# mean 6000 → sigma = sqrt(2·ln(6000/4000)) ≈ 0.90; its max of 50K is our per-turn cap.
# Scale: chosen so peak context per program matches the corpus (WORKLOADS: p50 23.8K,
# p95 69.3K, p99 89.9K). Peak ≈ prefix + task + Σ observations + Σ outputs grows with the
# turn count, whose spread alone gives p95/p50 ≈ 2.2 against the corpus's 2.9; the rest is
# a per-program verbosity factor (some repos print far more: big files, long test logs).
# A Monte Carlo grid over (median, factor sigma) with 200K programs gave, for 230 tokens and
# 0.6: p50 ≈ 24.0K (+1%), p95 ≈ 65K (−7%), p99 ≈ 100K (+11%). Two parameters cannot hit
# all three quantiles; we favoured the median, which is what most of a run's KV looks like.
# provenance: measured — Monte Carlo fit (with PROGRAM_VERBOSITY_SIGMA) to the corpus's peak context
# per session, p50 23.8K / p95 69.3K / p99 89.9K (WORKLOADS)
OBS_TOKENS_MEDIAN = 230
# provenance: measured — aiperf's coding-session manifest (WORKLOADS): new tokens per turn median
# 4000, mean 6000
OBS_TOKENS_SIGMA = math.sqrt(2 * math.log(6000 / 4000))
# provenance: measured — aiperf's manifest (WORKLOADS): new tokens per turn max 50K
OBS_TOKENS_MAX = 50_000
# provenance: measured — fitted with OBS_TOKENS_MEDIAN to the corpus's peak-context p50/p95/p99
# (WORKLOADS)
PROGRAM_VERBOSITY_SIGMA = 0.6

# --- output per call: a short thought and one bash command ---
# Median ASSUMPTION (~150 tokens: mini-SWE-agent replies with a THOUGHT paragraph and one
# command block). Sigma from WORKLOADS, aiperf output per turn median 800 / mean 1000:
# sqrt(2·ln(1000/800)) ≈ 0.67. Cap ASSUMPTION: a common max_tokens setting.
OUTPUT_TOKENS_MEDIAN = 150  # provenance: estimate — a THOUGHT paragraph and one command block
# provenance: measured — aiperf's manifest (WORKLOADS): output per turn median 800, mean 1000
OUTPUT_TOKENS_SIGMA = math.sqrt(2 * math.log(1000 / 800))
OUTPUT_TOKENS_MAX = 4096  # provenance: estimate — a common max_tokens setting

# --- context window ---
# ASSUMPTION: 128K tokens, the long-context window of Llama-3.1 and of Qwen3 with YaRN, so
# every program fits the catalogued models. A real agent would stop with a context-limit
# error; we end the program at the last call that fits (affects well under 1% of programs).
# provenance: estimate — the choice of window: 128K is Llama-3.1's and Qwen3-with-YaRN's published
# window (GLM-4.6's is 200K), picked so that every program fits every catalogued model
MAX_CONTEXT_TOKENS = 131_072

# --- tools ---
# bash: WORKLOADS, aiperf's tool-like delay, median 2 s / mean 5 s → sigma = sqrt(2·ln 2.5)
# ≈ 1.35; this gives p99 ≈ 47 s and p99.9 ≈ 130 s, the "tens to hundreds of seconds" tail of
# test runs and builds (WORKLOADS). Capped at 600 s, where ScienceAgentBench bash tails end.
# provenance: measured — aiperf's tool-like inter-turn delay, median 2 s (WORKLOADS)
BASH_S_MEDIAN = 2.0
# provenance: measured — aiperf's tool-like delay mean 5 s
BASH_S_SIGMA = math.sqrt(2 * math.log(5.0 / 2.0))
# provenance: fitted-to-paper [] — where the paper's Fig 9 ScienceAgentBench tails end (≈600 s,
# WORKLOADS); no spec compares a metric this cap moves (fig9 compares p95/p99, all below it)
TOOL_S_MAX = 600.0
# editor: WORKLOADS, OpenHands str_replace_editor p95 0.18 s / p99 0.38 s →
# sigma = ln(0.38/0.18)/(z99 − z95) ≈ 1.10, median = 0.18/e^(z95·σ) ≈ 0.03 s.
# provenance: fitted-to-paper [] — through the paper's Fig 9 str_replace_editor p95 0.18 s / p99
# 0.38 s; fig9 compares the science trace's editor (openhands.EDITOR_S), not this one
EDITOR_S_SIGMA = math.log(0.38 / 0.18) / (_Z99 - _Z95)
# provenance: fitted-to-paper [] — through Fig 9's editor p95 0.18 s (see EDITOR_S_SIGMA)
EDITOR_S_MEDIAN = 0.18 / math.exp(_Z95 * EDITOR_S_SIGMA)
# ASSUMPTION: mini-SWE-agent itself has only bash (it edits with sed / heredocs); the corpus
# mixes in agents with an editor tool, so a tenth of actions are editor calls.
# provenance: estimate — mini-SWE-agent has only bash; a tenth for the corpus's mix
EDITOR_FRACTION = 0.10
# ASSUMPTION: the final "submit" is a `git diff` in the sandbox, well under a second.
SUBMIT_S_MEDIAN = 0.5  # provenance: estimate — a `git diff` in the sandbox, well under a second
SUBMIT_S_SIGMA = 0.5  # provenance: estimate — spread of the submit action

# --- sandbox environment ---
# WORKLOADS / PAPER: environment preparation 29.9 s at 24 parallel workflows (the growth with
# concurrency is the simulator's business, not the trace's). Spread: ASSUMPTION, sigma 0.15.
# provenance: fitted-to-paper [fig2c] — the paper's own Fig 2c value at 24 parallel workflows, so
# fig2c's first point comes out by construction (every workload with a sandbox inherits it)
ENV_PREP_S_MEDIAN = 29.9
ENV_PREP_S_SIGMA = 0.15  # provenance: estimate — spread of preparation times between tasks
# WORKLOADS / PAPER: mini-SWE-agent sandbox ≈2 GB. Spread: ASSUMPTION, sigma 0.1.
# provenance: measured — PAPER / WORKLOADS: a mini-SWE-agent sandbox takes ≈2 GB (a property of the
# paper's setup, stated in its text)
ENV_DISK_BYTES_MEDIAN = 2_000_000_000
ENV_DISK_BYTES_SIGMA = 0.10  # provenance: estimate — spread of sandbox sizes between repositories
ENV_PORTS = 1  # provenance: estimate — one port to talk to the sandbox

# --- arrivals ---
# ASSUMPTION: a Poisson stream for open-loop mode; closed-loop replay ignores arrival_s.
# 6/min admits the paper's concurrency range (24-96) within 4-16 minutes.
# provenance: estimate — open-loop arrival rate; closed-loop replay (every figure) ignores it
ARRIVALS_PER_MIN = 6.0

# Stream labels mixed into the seed, so each subsystem has its own independent stream.
_ARRIVAL_STREAM = 0  # provenance: definition — a random-stream label
_PROGRAM_STREAM = 1  # provenance: definition — a random-stream label


# Draws by (median, sigma), the median scaled inside the log (distributions.py explains why
# these are not its Lognormal / draw_tokens).
def _lognormal(rng: np.random.Generator, median: float, sigma: float) -> float:
    return float(rng.lognormal(math.log(median), sigma))


def _tokens(rng: np.random.Generator, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(_lognormal(rng, median, sigma))))


def _program(index: int, arrival_s: float, seed: int) -> ProgramSpec:
    rng = np.random.default_rng([seed, _PROGRAM_STREAM, index])
    turns = round(_lognormal(rng, TURNS_MEDIAN, TURNS_SIGMA))
    turns = max(TURNS_MIN, min(TURNS_MAX, turns))
    verbosity = _lognormal(rng, 1.0, PROGRAM_VERBOSITY_SIGMA)

    steps: list[StepSpec] = []
    context = SYSTEM_PROMPT_TOKENS
    for k in range(turns):
        if k == 0:
            new = _tokens(rng, TASK_TOKENS_MEDIAN, TASK_TOKENS_SIGMA, TASK_TOKENS_MAX)
        else:
            new = _tokens(rng, OBS_TOKENS_MEDIAN * verbosity, OBS_TOKENS_SIGMA, OBS_TOKENS_MAX)
        out = _tokens(rng, OUTPUT_TOKENS_MEDIAN, OUTPUT_TOKENS_SIGMA, OUTPUT_TOKENS_MAX)
        if steps and context + new + out > MAX_CONTEXT_TOKENS:
            break
        context += new + out
        if rng.random() < EDITOR_FRACTION:
            tool, tool_s = "editor", _lognormal(rng, EDITOR_S_MEDIAN, EDITOR_S_SIGMA)
        else:
            tool, tool_s = "bash", _lognormal(rng, BASH_S_MEDIAN, BASH_S_SIGMA)
        steps.append(StepSpec(new, out, tool, seconds(tool_s, TOOL_S_MAX)))
    # The last call's action is the submission, whatever tool it would otherwise have used.
    last = steps[-1]
    steps[-1] = StepSpec(
        last.input_tokens,
        last.output_tokens,
        "submit",
        seconds(_lognormal(rng, SUBMIT_S_MEDIAN, SUBMIT_S_SIGMA), TOOL_S_MAX),
    )

    env = EnvSpec(
        prep_s=round(_lognormal(rng, ENV_PREP_S_MEDIAN, ENV_PREP_S_SIGMA), 3),
        disk_bytes=round(_lognormal(rng, ENV_DISK_BYTES_MEDIAN, ENV_DISK_BYTES_SIGMA)),
        ports=ENV_PORTS,
    )
    return ProgramSpec(
        id=f"{WORKLOAD}-{index:04d}",
        workload=WORKLOAD,
        arrival_s=arrival_s,
        prefix_id=SYSTEM_PROMPT_ID,
        prefix_tokens=SYSTEM_PROMPT_TOKENS,
        env=env,
        steps=tuple(steps),
    )


def generate(n_programs: int, seed: int) -> list[ProgramSpec]:
    """`n_programs` mini-SWE-agent-like programs, deterministic in `seed`."""
    if n_programs < 1:
        raise ValueError(f"n_programs must be at least 1, got {n_programs}")
    arrivals = poisson_arrivals(n_programs, seed, ARRIVALS_PER_MIN, _ARRIVAL_STREAM)
    return [_program(i, arrivals[i], seed) for i in range(n_programs)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m thundersim.traces.workloads.swe",
        description="Write a mini-SWE-agent-like trace (JSONL) to stdout.",
    )
    parser.add_argument("--programs", type=int, default=300, help="number of programs")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    if args.programs < 1:
        parser.error("--programs must be at least 1")
    dump_trace(generate(args.programs, args.seed), sys.stdout)


if __name__ == "__main__":
    main()
