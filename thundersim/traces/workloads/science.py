"""OpenHands (CodeActAgent) on ScienceAgentBench (102 tasks), from published statistics.

The same agent loop as openhands.py (it is the same agent: codeact.py) with the task suite's own numbers:
a task is a data-driven science problem (an instruction, a dataset preview, an output path);
the agent writes and runs Python — through execute_bash (`python program.py`, the long
calls: model fitting, data processing) and execute_ipython_cell — edits files with
str_replace_editor and keeps a task_tracker list. Tool latencies are ThunderAgent's
measurements (WORKLOADS / PAPER); token counts follow openhands.py.

Every parameter cites /work/shared/WORKLOADS.md (WORKLOADS), /work/shared/PAPER.md (PAPER),
openhands.py (which cites its own sources), a named OpenHands source file, or says ASSUMPTION.

Randomness: one stream for arrivals and one per program, so
``generate(n, seed)[:k] == generate(k, seed)``.

    thundersim trace gen --workload science --programs 102 --seed 0 > traces/science.jsonl
"""

from __future__ import annotations

from thundersim.traces.schema import ProgramSpec

from . import openhands as oh
from .codeact import CodeActProfile, Tool, codeact_generate
from .distributions import Lognormal, LognormalMixture

WORKLOAD = "science"
N_TASKS = 102  # provenance: spec — WORKLOADS / PAPER: ScienceAgentBench has 102 tasks

# --- iterations ---
# OpenHands' ScienceAgentBench harness (evaluation/benchmarks/scienceagentbench/README.md)
# runs with max_iter 30 by default. Median and spread ASSUMPTION: 15 iterations, sigma 0.5
# (one program to write, run, debug and rerun; ≈8% of runs reach the cap).
TURNS = Lognormal(15, 0.5)  # provenance: estimate — median 15 iterations, sigma 0.5
TURNS_MAX = 30  # provenance: spec — OpenHands' ScienceAgentBench harness default max_iter 30
TURNS_MIN = oh.TURNS_MIN

# --- shared system prompt ---
# OpenHands' (openhands.py, ≈6,000 tokens) plus the execute_ipython_cell schema, which this
# agent configuration enables (ASSUMPTION: ≈300 tokens). A different tool set is a different
# prompt, so it has its own prefix id.
# provenance: estimate — openhands.py's prompt plus ≈300 tokens for the execute_ipython_cell schema
SYSTEM_PROMPT_TOKENS = oh.SYSTEM_PROMPT_TOKENS + 300
SYSTEM_PROMPT_ID = "science-system"

# --- first call: the task ---
# ASSUMPTION: median 1,200 tokens, sigma 0.5, capped at 8,000 — an instruction of a few
# sentences, the dataset's folder tree and a preview of its first rows, the expected output
# file; the optional expert knowledge is off by default (use_knowledge false in the harness).
# OpenHands' wrapping of the instruction: ASSUMPTION 200 tokens.
TASK_TOKENS = Lognormal(1200, 0.5)  # provenance: estimate — instruction, dataset tree and preview
TASK_TOKENS_MAX = 8000  # provenance: estimate — a cap on the task's size
TASK_TEMPLATE_TOKENS = 200  # provenance: estimate — OpenHands' wrapping of the instruction

# --- observations, outputs, condensation, window: as openhands.py ("contexts like OpenHands")
# The observation scale is openhands.py's, tuned to Fig 5a/b's thrashing onset (fitted to the
# paper: its tag names this workload's figures, fig4f and fig5f, too).
OBS_TOKENS = oh.OBS_TOKENS
OBS_TOKENS_MAX = oh.OBS_TOKENS_MAX
PROGRAM_VERBOSITY_SIGMA = oh.PROGRAM_VERBOSITY_SIGMA
OUTPUT_TOKENS = oh.OUTPUT_TOKENS
OUTPUT_TOKENS_MAX = oh.OUTPUT_TOKENS_MAX
RESET_PROBABILITY = oh.RESET_PROBABILITY  # WORKLOADS: aiperf ≈0.05 per turn (see openhands.py)
RESET_MIN_TURN = oh.RESET_MIN_TURN

# --- tools (WORKLOADS / PAPER: ThunderAgent's measurements on ScienceAgentBench) ---
# Tails reach ≈600 s (WORKLOADS): every tool is capped there.
# provenance: fitted-to-paper [] — where the paper's Fig 9 science tails end (≈600 s, WORKLOADS); no
# spec compares a metric this cap moves (fig9's p95/p99 lie below it)
TOOL_S_MAX = 600.0
# execute_bash p95 71 s / p99 192 s: one lognormal through both, sigma = ln(192/71)/(z99 − z95)
# ≈ 1.46, median ≈ 6.4 s; it puts ≈0.1% of calls above 600 s, which the cap clips.
# provenance: fitted-to-paper [fig9] — through the paper's Fig 9 execute_bash p95 71 s / p99 192 s,
# which fig9 then compares (an input, not a fit target, of fig4f/fig5f's throughput and hit rate)
BASH_S = Lognormal.through(71.0, 192.0)
# execute_ipython_cell p95 ≈5 s / p99 97 s: a 19× jump within the top 4% that no single
# lognormal can make with a sensible body (through p95/p99 alone sigma ≈ 4.4, median 4 ms).
# Mixture: a body of quick cells — ASSUMPTION median 1 s, sigma 0.8 (imports, prints, a
# dataframe head) — and 3% slow cells (ASSUMPTION: loading data, fitting a model) whose
# lognormal is fitted so that the mixture's p95 and p99 are exactly 5 and 97 s
# (LognormalMixture.through): median ≈53 s, sigma ≈1.42. The weight 0.03 maximises how well a
# few thousand samples pin down both quantiles among the weights that fit.
# provenance: fitted-to-paper [fig9] — tail fitted to the paper's Fig 9 execute_ipython_cell p95 ≈5
# s / p99 97 s, which fig9 then compares; the body (median 1 s, sigma 0.8) and the 3% weight are
# estimates
IPYTHON_S = LognormalMixture.through(5.0, 97.0, Lognormal(1.0, 0.8), tail_weight=0.03)
# str_replace_editor 0.18 / 0.38 s and task_tracker 0.05 / 0.13 s: the same measurements as
# openhands.py.
EDITOR_S = oh.EDITOR_S
TASK_TRACKER_S = oh.TASK_TRACKER_S
# Mix: ASSUMPTION — running the program (bash) and probing data (ipython) about a third each,
# editing the program file a quarter, the task list the rest.
# provenance: estimate — the action mix (0.35 / 0.30 / 0.28 / 0.07) and task_tracker's 0.3×
# observation
TOOLS = (
    Tool("execute_bash", 0.35, BASH_S),
    Tool("execute_ipython_cell", 0.30, IPYTHON_S),
    Tool("str_replace_editor", 0.28, EDITOR_S),
    Tool("task_tracker", 0.07, TASK_TRACKER_S, observation_scale=0.3),
)
# `finish`: the harness copies the predicted program out of the sandbox (ASSUMPTION, as
# openhands.py's patch extraction).
# provenance: definition — fraction 0: only the last action
FINISH = Tool("finish", 0.0, oh.FINISH_S)

# --- sandbox ---
# PAPER: the science runs use OpenHands' Docker sandboxes; ASSUMPTION: the same footprint as
# OpenHands on SWE-bench (>10 GB, a scientific Python stack in place of a repository), the same
# preparation time (29.9 s at 24 parallel) and the same four ports.
ENV_PREP_S = oh.ENV_PREP_S
ENV_DISK_FLOOR_BYTES = oh.ENV_DISK_FLOOR_BYTES
ENV_DISK_EXCESS_BYTES = oh.ENV_DISK_EXCESS_BYTES
ENV_PORTS = oh.ENV_PORTS

ARRIVALS_PER_MIN = oh.ARRIVALS_PER_MIN  # ASSUMPTION, as swe.py: a Poisson stream, 6/min

PROFILE = CodeActProfile(
    workload=WORKLOAD,
    prefix_id=SYSTEM_PROMPT_ID,
    prefix_tokens=SYSTEM_PROMPT_TOKENS,
    turns=TURNS,
    turns_min=TURNS_MIN,
    turns_max=TURNS_MAX,
    task_tokens=TASK_TOKENS,
    task_template_tokens=TASK_TEMPLATE_TOKENS,
    task_tokens_max=TASK_TOKENS_MAX,
    observation_tokens=OBS_TOKENS,
    observation_tokens_max=OBS_TOKENS_MAX,
    verbosity_sigma=PROGRAM_VERBOSITY_SIGMA,
    output_tokens=OUTPUT_TOKENS,
    output_tokens_max=OUTPUT_TOKENS_MAX,
    tools=TOOLS,
    finish=FINISH,
    tool_s_max=TOOL_S_MAX,
    reset_probability=RESET_PROBABILITY,
    reset_min_turn=RESET_MIN_TURN,
    summary_tokens=oh.SUMMARY_TOKENS,
    summary_tokens_max=oh.SUMMARY_TOKENS_MAX,
    keep_fraction=oh.KEEP_FRACTION,
    max_context_tokens=oh.MAX_CONTEXT_TOKENS,
    env_prep_s=ENV_PREP_S,
    env_disk_floor_bytes=ENV_DISK_FLOOR_BYTES,
    env_disk_excess_bytes=ENV_DISK_EXCESS_BYTES,
    env_ports=ENV_PORTS,
)


def generate(n_programs: int, seed: int) -> list[ProgramSpec]:
    """`n_programs` OpenHands-on-ScienceAgentBench programs, deterministic in `seed`.

    The suite has 102 tasks; more programs are simply more draws from the same distributions.
    """
    return codeact_generate(PROFILE, n_programs, seed, ARRIVALS_PER_MIN)
