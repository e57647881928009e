"""An OpenHands (CodeActAgent) coding workload on SWE-bench, from published statistics.

Each program is one SWE-bench task run by OpenHands: a large shared system prompt (the CodeAct
prompt plus the JSON schemas of its tools), the issue wrapped in OpenHands' SWE-bench
instruction, then a loop of function calls (execute_bash, str_replace_editor, task_tracker),
each followed by its observation, ending in `finish`. Compared with mini-SWE-agent (swe.py)
the iterations are capped lower (50), the observations and replies are larger, the sandbox is
much heavier (>10 GB), and the history is now and then condensed (a context reset).

Every parameter cites /work/shared/WORKLOADS.md (WORKLOADS), /work/shared/PAPER.md (PAPER), a
named OpenHands source file (OpenHands), or says ASSUMPTION. Fits are to published quantiles;
expect the shape, not the exact tails, of real runs.

The agent loop is codeact.py's, shared with science.py (OpenHands on ScienceAgentBench, its
own constants); the distributions are distributions.py's.

Randomness: one stream for arrivals and one per program, derived from the seed, so
``generate(n, seed)[:k] == generate(k, seed)``.

    thundersim trace gen --workload openhands --programs 100 --seed 0 > traces/openhands.jsonl
"""

from __future__ import annotations

from thundersim.traces.schema import ProgramSpec

from . import swe
from .codeact import CodeActProfile, Tool, codeact_generate
from .distributions import Lognormal

WORKLOAD = "openhands"

# --- OpenHands on SWE-bench: the constants ---------------------------------------------------

# Iterations (LLM calls) per program. Shape: WORKLOADS, 15K-session coding corpus (SWE-agent,
# OpenHands and others), turns p50 36 / p95 87 → the same lognormal as swe.py. Cap: PAPER /
# WORKLOADS, OpenHands runs with 50 iterations, so ≈27% of programs stop at the cap (the
# corpus has P(turns > 50) ≈ 0.27), as OpenHands runs on hard SWE-bench tasks do.
TURNS = Lognormal(swe.TURNS_MEDIAN, swe.TURNS_SIGMA)
# provenance: spec — PAPER / WORKLOADS: OpenHands runs with 50 iterations (the harness setting the
# paper ran)
TURNS_MAX = 50
TURNS_MIN = swe.TURNS_MIN

# Shared system prompt. ASSUMPTION, larger than mini-SWE's 3000 (swe.py), from OpenHands'
# sources: CodeAct's system_prompt.j2 (≈1.4K characters in early releases, several times that
# later) plus the JSON tool schemas sent with every call — execute_bash ≈4.0K characters,
# str_replace_editor ≈6.0K, task_tracker ≈8.2K (openhands/agenthub/codeact_agent/tools/*.py),
# think and finish ≈1–2K — ≈25K characters ≈ 6,000 tokens at ≈4 characters per token.
# provenance: estimate — character counts of OpenHands' prompt and tool schemas at ≈4 chars/token
SYSTEM_PROMPT_TOKENS = 6000
SYSTEM_PROMPT_ID = "openhands-system"

# First call: the issue (the same distribution as swe.py, both are SWE-bench issues) inside
# OpenHands' SWE-bench instruction (evaluation/benchmarks/swe_bench: "<uploaded_files>...
# Phase 1. READING ... Phase 8. FINAL REVIEW"). ASSUMPTION: the template is ≈800 tokens; it
# wraps the per-task issue, so it is not part of the shared prefix.
TASK_TOKENS = Lognormal(swe.TASK_TOKENS_MEDIAN, swe.TASK_TOKENS_SIGMA)
TASK_TOKENS_MAX = swe.TASK_TOKENS_MAX
TASK_TEMPLATE_TOKENS = 800  # provenance: estimate — OpenHands' SWE-bench instruction template

# Later calls: the previous action's observation. Shape: WORKLOADS, aiperf's new tokens per
# turn (median 4000 / mean 6000 → sigma 0.90, as in swe.py) and swe.py's per-task verbosity
# factor (sigma 0.6). Cap: OpenHands truncates an observation to LLMConfig.max_message_chars
# = 30,000 characters (openhands/core/config/llm_config.py) ≈ 7,500 tokens at ≈4 chars/token.
# Scale: ASSUMPTION, 2.3× mini-SWE's median (str_replace_editor `view` prints whole files with
# line numbers, up to 16,000 characters, where mini-SWE-agent tends to `sed -n` a few lines),
# tuned to a target from PAPER Fig 5a/b: OpenHands thrashes from 48 parallel workflows,
# mini-SWE from 72, on the same GLM-4.6 node, so an OpenHands program holds ≈72/48 = 1.5× the
# KV of a mini-SWE one: peak context median ≈1.5 × the corpus's 23.8K ≈ 36K. A Monte Carlo
# over 20K programs with the constants here gives median ≈35.7K, p95 ≈77K (resets included).
# Every figure on the OpenHands or ScienceAgentBench workloads (science.py reuses these
# observations) compares a metric that depends on this scale.
# provenance: fitted-to-paper [fig4b, fig5b, fig4e, fig5e, fig6a, table2, fig4f, fig5f] — the 2.3×
# scale is tuned so that OpenHands' KV thrashing starts where Fig 5a/5b's does (48 vs mini-SWE's 72
# parallel workflows); the shape (sigma) is aiperf's (WORKLOADS)
OBS_TOKENS = Lognormal(2.3 * swe.OBS_TOKENS_MEDIAN, swe.OBS_TOKENS_SIGMA)
# provenance: spec — OpenHands' LLMConfig.max_message_chars = 30,000 characters, converted at ≈4
# characters per token (an estimate)
OBS_TOKENS_MAX = 7500
PROGRAM_VERBOSITY_SIGMA = swe.PROGRAM_VERBOSITY_SIGMA

# Output per call: a thought and one function call whose arguments may carry code
# (str_replace_editor's old_str/new_str/file_text). Median ASSUMPTION 250 tokens (mini-SWE's
# 150 plus the JSON arguments); sigma WORKLOADS (aiperf, as swe.py); cap as swe.py.
# provenance: estimate — median 250 tokens (mini-SWE's 150 plus JSON arguments); sigma as swe.py
OUTPUT_TOKENS = Lognormal(250, swe.OUTPUT_TOKENS_SIGMA)
OUTPUT_TOKENS_MAX = swe.OUTPUT_TOKENS_MAX

# --- condensation (context resets) ---
# WORKLOADS: aiperf's agentic-coding manifest resets the context with probability ≈0.05 per
# turn; we use it. Caveat: OpenHands' own defaults condense less — V0's AgentConfig uses a
# no-op condenser and truncates only on a context-window error (enable_history_truncation),
# the V1 SDK's LLMSummarizingCondenser fires at 120–240 events (60+ iterations) — so this is
# an upper estimate for 50-iteration runs. ASSUMPTION: not before turn 5 (the condenser keeps
# the first 4 events, keep_first = 4, so there is nothing to condense before).
# provenance: measured — aiperf's agentic-coding manifest: context reset probability ≈0.05 per turn
# (WORKLOADS); an upper estimate for OpenHands' own condenser defaults (see above)
RESET_PROBABILITY = 0.05
# provenance: spec — OpenHands' condenser keeps the first 4 events (keep_first = 4), so nothing can
# be condensed before turn 5
RESET_MIN_TURN = 5
# OpenHands' LLMSummarizingCondenser keeps the newer half of the events (events_from_tail =
# max_size // 2 − keep_first − 1) and replaces the older half by a summary. The kept half is
# re-sent after the summary, so it is new input to the engine. Summary size ASSUMPTION:
# median 800 tokens (its template asks for USER_CONTEXT, COMPLETED, PENDING, CODE_STATE,
# TESTS, CHANGES … sections), sigma 0.5, capped at 4096 (a max_tokens setting).
KEEP_FRACTION = 0.5  # provenance: spec — LLMSummarizingCondenser keeps the newer half of the events
SUMMARY_TOKENS = Lognormal(800, 0.5)  # provenance: estimate — size of the condenser's summary
SUMMARY_TOKENS_MAX = 4096  # provenance: estimate — a max_tokens setting for the summary

# Context window: as swe.py (128K). A call that would overflow is condensed first (OpenHands
# condenses / truncates on a context-window error), and the run ends if even that overflows.
MAX_CONTEXT_TOKENS = swe.MAX_CONTEXT_TOKENS

# --- tools ---
# WORKLOADS (ThunderAgent's measurements of OpenHands' tools): str_replace_editor p95 0.18 s /
# p99 0.38 s → sigma = ln(0.38/0.18)/(z99 − z95) ≈ 1.10, median ≈ 0.030 s.
# provenance: fitted-to-paper [fig9] — through the paper's Fig 9 str_replace_editor p95 0.18 s / p99
# 0.38 s, which fig9 then compares (science.py's editor is this one)
EDITOR_S = Lognormal.through(0.18, 0.38)
# task_tracker p95 0.05 s / p99 0.13 s → sigma ≈ 1.40, median ≈ 0.005 s (an in-memory list).
# provenance: fitted-to-paper [] — through the paper's task_tracker p95 0.05 s / p99 0.13 s
# (WORKLOADS); no spec compares task_tracker
TASK_TRACKER_S = Lognormal.through(0.05, 0.13)
# execute_bash: no OpenHands-on-SWE-bench quantiles are published; WORKLOADS gives "bash
# seconds with a heavy tail from test runs and builds" and aiperf's tool-like delay (median
# 2 s / mean 5 s → sigma 1.35, p95 ≈19 s, p99 ≈47 s), the fit swe.py uses; capped at 600 s
# (where ScienceAgentBench's bash tails end, WORKLOADS), as in swe.py.
BASH_S = Lognormal(swe.BASH_S_MEDIAN, swe.BASH_S_SIGMA)
TOOL_S_MAX = swe.TOOL_S_MAX
# `finish` ends the run; the harness then extracts the patch (`git diff`) in the sandbox, the
# same sub-second action as swe.py's submit (ASSUMPTION there).
FINISH_S = Lognormal(swe.SUBMIT_S_MEDIAN, swe.SUBMIT_S_SIGMA)
# Mix of actions: ASSUMPTION — bash for exploration and tests about half the time, the editor
# for viewing and editing files most of the rest, task_tracker now and then (it is advertised
# to be used at the start and whenever a sub-task is done). Observation sizes: task_tracker
# prints a short list (ASSUMPTION 0.3× the median observation).
# provenance: estimate — the action mix (bash 0.55, editor 0.38, task_tracker 0.07) and
# task_tracker's 0.3× observation size: no published per-tool counts for OpenHands on SWE-bench
TOOLS = (
    Tool("execute_bash", 0.55, BASH_S),
    Tool("str_replace_editor", 0.38, EDITOR_S),
    Tool("task_tracker", 0.07, TASK_TRACKER_S, observation_scale=0.3),
)
# provenance: definition — fraction 0: only ever the last action
FINISH = Tool("finish", 0.0, FINISH_S)

# --- sandbox environment ---
# PAPER / WORKLOADS: environment preparation 29.9 s at 24 parallel workflows (its growth with
# concurrency is the simulator's business), spread as swe.py (ASSUMPTION, sigma 0.15).
ENV_PREP_S = Lognormal(swe.ENV_PREP_S_MEDIAN, swe.ENV_PREP_S_SIGMA)
# PAPER / WORKLOADS: OpenHands sandboxes take >10 GB of disk, a lower bound stated in the text.
# The size is NOT read off Fig 2b (its 2 TB crossing at ≈195 workflows is what fig2b compares,
# so it cannot also be an input): 10 GB is the floor, plus a small lognormal excess. The one
# independent per-instance figure we found sits at the floor, not above it: OpenHands on
# SWE-bench Verified left ≈1.3 TB of images after ≈140 instances, ≈9.3 GB each
# (github.com/OpenHands/OpenHands/issues/9679). So the excess is kept small: median 0.1 GB
# (the container's own writes: edits, build and test artefacts, caches), sigma 1.0 (some
# repositories carry large test data); median total ≈10.1 GB, mean ≈10.16 GB.
# provenance: measured — PAPER / WORKLOADS: OpenHands sandboxes take >10 GB (the paper's stated
# lower bound; OpenHands issue #9679 reports ≈9.3 GB of images per SWE-bench Verified instance)
ENV_DISK_FLOOR_BYTES = 10_000_000_000
# provenance: estimate — a small excess over the floor (median 0.1 GB, sigma 1.0), not derived from
# any figure; was median 0.3 GB back-derived from Fig 2b's 2 TB crossing
ENV_DISK_EXCESS_BYTES = Lognormal(100_000_000, 1.0)
# OpenHands' DockerRuntime takes four host ports per sandbox: the action-execution server,
# VSCode and two app ports (EXECUTION_SERVER_PORT_RANGE, VSCODE_PORT_RANGE, APP_PORT_RANGE_1/2
# in openhands/runtime/impl/docker/docker_runtime.py).
ENV_PORTS = 4  # provenance: spec — OpenHands' DockerRuntime takes four host port ranges per sandbox

# --- arrivals ---
ARRIVALS_PER_MIN = swe.ARRIVALS_PER_MIN  # ASSUMPTION, as swe.py: a Poisson stream, 6/min

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
    summary_tokens=SUMMARY_TOKENS,
    summary_tokens_max=SUMMARY_TOKENS_MAX,
    keep_fraction=KEEP_FRACTION,
    max_context_tokens=MAX_CONTEXT_TOKENS,
    env_prep_s=ENV_PREP_S,
    env_disk_floor_bytes=ENV_DISK_FLOOR_BYTES,
    env_disk_excess_bytes=ENV_DISK_EXCESS_BYTES,
    env_ports=ENV_PORTS,
)


def generate(n_programs: int, seed: int) -> list[ProgramSpec]:
    """`n_programs` OpenHands-on-SWE-bench programs, deterministic in `seed`."""
    return codeact_generate(PROFILE, n_programs, seed, ARRIVALS_PER_MIN)
