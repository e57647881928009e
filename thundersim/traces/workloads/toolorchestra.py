"""A ToolOrchestra workload (an 8B orchestrator on HLE), from published statistics.

Each program is one Humanity's Last Exam question. An 8B orchestrator (Qwen3-8B-based) runs
rounds: each round it reads the question plus everything gathered so far and calls one remote
tool — `search` (a query-writing LLM, then retrieval), `enhance_reasoning` (a frontier or coder
model writes Python that is run) or `answer` (a large model answers; the program ends). The
orchestrator's calls are short and few; the tools are slow and heavy-tailed. There is no
sandbox.

How the prompt evolves follows ToolOrchestra's HLE evaluation (NVlabs/ToolOrchestra,
evaluation/eval_hle.py): every round rebuilds a two-message chat, "Problem: …" followed by the
documents, code outputs and attempts gathered so far, cut to the last 27,000 tokens. New
material is appended, so while the cut is not reached a round's prompt extends the last
one's (the engine can reuse it): we append it as new input. Once the cut is reached, each
round's prompt starts somewhere else: a context reset, with the whole capped prompt as new
input. One simplification: the trace's context also keeps the orchestrator's earlier replies,
which the real prompt drops (they are a small part of it).

Every parameter cites /work/shared/WORKLOADS.md (WORKLOADS), /work/shared/PAPER.md (PAPER),
eval_hle.py (ToolOrchestra) or says ASSUMPTION.

Randomness: one stream for arrivals and one per program, so
``generate(n, seed)[:k] == generate(k, seed)``.

    thundersim trace gen --workload toolorchestra --programs 200 --seed 0 > traces/toolorchestra.jsonl
"""

from __future__ import annotations

import numpy as np

from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

from .distributions import Lognormal, LognormalMixture, draw_tokens, poisson_arrivals, seconds

WORKLOAD = "toolorchestra"

# --- rounds (orchestrator calls) per program ---
# WORKLOADS / PAPER: up to 50 rounds; ToolOrchestra's eval_hle.py --max_rounds defaults to 50.
# "Typically few" (WORKLOADS: short programs): ASSUMPTION median 4 rounds, sigma 0.6
# (p95 ≈ 11); the last round calls `answer`, which ends the program.
ROUNDS = Lognormal(4, 0.6)  # provenance: estimate — "typically few" rounds: median 4, sigma 0.6
ROUNDS_MIN = 1  # provenance: definition — the orchestrator may answer at once
# provenance: spec — eval_hle.py --max_rounds default 50 (PAPER / WORKLOADS: up to 50)
ROUNDS_MAX = 50

# --- shared system prompt ---
# ToolOrchestra: the system message is one sentence ("You are good at using tools.") and the
# three tool schemas (search / enhance_reasoning / answer, each with an enum of expert models)
# ride with it. ASSUMPTION: ≈600 tokens after the chat template. Shared by every program.
SYSTEM_PROMPT_TOKENS = 600  # provenance: estimate — one sentence plus three tool schemas
SYSTEM_PROMPT_ID = "toolorchestra-system"

# --- the question ---
# ASSUMPTION: median 250 tokens, sigma 0.8, capped at 4,000 (HLE questions run from one line
# to a page of definitions); "Problem: … Choose an appropriate tool." adds ≈15 tokens.
PROBLEM_TOKENS = Lognormal(250, 0.8)  # provenance: estimate — HLE question length
PROBLEM_TOKENS_MAX = 4000  # provenance: estimate — a page of definitions at most
PROMPT_TEMPLATE_TOKENS = 15  # provenance: estimate — "Problem: … Choose an appropriate tool."

# --- what each tool adds to the next prompt ---
# search: eval_hle.py retrieves the top 50 documents and shows each cut to 1,200 characters,
# at most ≈50 × 1,200 / 4 = 15,000 tokens; ASSUMPTION: a median of 5,000 new tokens (many
# documents are short or already in the list), sigma 0.5.
SEARCH_ADDS_TOKENS = Lognormal(5000, 0.5)  # provenance: estimate — new tokens a search adds
# provenance: spec — eval_hle.py shows the top 50 documents cut to 1,200 characters each, converted
# at ≈4 characters per token (an estimate)
SEARCH_ADDS_TOKENS_MAX = 15_000
# enhance_reasoning: the generated code and its output. ASSUMPTION: median 600 tokens,
# sigma 0.7, capped at 12,000 (eval_hle.py cuts code and attempts to 12,000 tokens).
CODE_ADDS_TOKENS = Lognormal(600, 0.7)  # provenance: estimate — generated code and its output
# provenance: spec — eval_hle.py cuts code and attempts to 12,000 tokens
CODE_ADDS_TOKENS_MAX = 12_000
# eval_hle.py cuts the gathered context to 27,000 tokens minus the question's length.
CONTEXT_CAP_TOKENS = 27_000  # provenance: spec — eval_hle.py's context cut (27,000 tokens)

# --- orchestrator output per round ---
# ASSUMPTION: median 600 tokens (a Qwen3-8B-based model thinks, then emits one tool call),
# sigma 0.7; eval_hle.py calls the orchestrator with max_length 12,000.
# provenance: estimate — a Qwen3-8B-based model thinks, then calls
OUTPUT_TOKENS = Lognormal(600, 0.7)
# provenance: spec — eval_hle.py calls the orchestrator with max_length 12,000
OUTPUT_TOKENS_MAX = 12_000

# --- which tool, when ---
# ASSUMPTION: before answering, search in 55% of rounds and enhance_reasoning in 45%
# (ToolOrchestra reports Orchestrator-8B's calls as balanced across tools, without numbers
# we can cite). eval_hle.py removes a tool from the menu after it was used in the last two
# rounds, so no tool is used three times in a row.
SEARCH_FRACTION = 0.55  # provenance: estimate — no published per-tool call counts

# --- tool latencies (WORKLOADS / PAPER: ThunderAgent's measurements on HLE) ---
# Heavy-tailed: a single lognormal through p95 and p99 would put the mode at milliseconds,
# so each tool is a body plus a slow component (LognormalMixture.through fits the slow one
# so that the mixture's p95 and p99 are exactly the published ones; body and weight are
# ASSUMPTIONs, chosen among those that fit so that a few thousand samples pin down both
# quantiles, and so that the published modes come out).
# answer p95 29 s / p99 108 s, mode ≈4 s: body mode 4 s (sigma 0.7, median 6.5 s), 8% slow
# answers (a frontier model thinking hard) fitted to median ≈23 s, sigma ≈1.33.
# provenance: fitted-to-paper [fig9] — tail fitted to the paper's Fig 9 answer p95 29 s / p99 108 s
# and mode ≈4 s, which fig9 then compares; body sigma and the 8% weight are estimates (an input, not
# a fit target, of fig4c/fig5c)
ANSWER_S = LognormalMixture.through(29.0, 108.0, Lognormal.from_mode(4.0, 0.7), tail_weight=0.08)
# enhance_reasoning p95 65 s / p99 113 s, mode ≈10 s, second bump ≈70 s: body mode 10 s
# (sigma 0.4, median 11.7 s), 8% in a second component fitted to median ≈73 s, sigma ≈0.38.
# The bump at ≈70 s comes out of the fit, not in by hand; a body wider than sigma ≈0.45 would
# swallow it (its tail would fill the dip between the two modes).
# provenance: fitted-to-paper [fig9] — fitted to the paper's Fig 9 enhance-reasoning p95 65 s / p99
# 113 s and mode ≈10 s, which fig9 then compares; body sigma and the 8% weight are estimates
ENHANCE_REASONING_S = LognormalMixture.through(
    65.0, 113.0, Lognormal.from_mode(10.0, 0.4), tail_weight=0.08
)
# search p95 5 s / p99 35 s: body median 2 s (sigma 0.4: an LLM writes the query, retrieval
# answers in well under a second), 5% slow searches fitted to median ≈13 s, sigma ≈1.18.
# provenance: fitted-to-paper [fig9] — tail fitted to the paper's Fig 9 search p95 5 s / p99 35 s,
# which fig9 then compares; the body (median 2 s, sigma 0.4) and the 5% weight are estimates
SEARCH_S = LognormalMixture.through(5.0, 35.0, Lognormal(2.0, 0.4), tail_weight=0.05)
# No maximum is published; ASSUMPTION: 600 s, the cap of every other workload here.
# provenance: estimate — no maximum is published; the cap of every other workload
TOOL_S_MAX = 600.0

# --- no sandbox (WORKLOADS / PAPER: remote tools): no preparation, no disk, no ports ---
# provenance: spec — PAPER / WORKLOADS: ToolOrchestra's tools are remote services, there is no
# sandbox
ENV = EnvSpec(prep_s=0.0, disk_bytes=0, ports=0)

# --- arrivals ---
ARRIVALS_PER_MIN = 6.0  # provenance: estimate — as swe.py: open-loop only, closed loops ignore it

_ARRIVAL_STREAM = 0  # provenance: definition — a random-stream label
_PROGRAM_STREAM = 1  # provenance: definition — a random-stream label

_LATENCY = {"search": SEARCH_S, "enhance_reasoning": ENHANCE_REASONING_S, "answer": ANSWER_S}


def _next_tool(rng: np.random.Generator, used: list[str]) -> str:
    if len(used) >= 2 and used[-1] == used[-2]:
        # eval_hle.py takes the tool of the last two rounds off the menu
        return "enhance_reasoning" if used[-1] == "search" else "search"
    return "search" if rng.random() < SEARCH_FRACTION else "enhance_reasoning"


def _program(index: int, arrival_s: float, seed: int) -> ProgramSpec:
    rng = np.random.default_rng([seed, _PROGRAM_STREAM, index])
    rounds = max(ROUNDS_MIN, min(ROUNDS_MAX, round(ROUNDS.draw(rng))))
    problem = draw_tokens(rng, PROBLEM_TOKENS, PROBLEM_TOKENS_MAX)
    gathered = 0  # documents, code and outputs gathered so far (before the cut)
    steps: list[StepSpec] = []
    used: list[str] = []
    for k in range(rounds):
        reset = False
        if k == 0:
            new = problem + PROMPT_TEMPLATE_TOKENS
        else:
            if used[-1] == "search":
                added = draw_tokens(rng, SEARCH_ADDS_TOKENS, SEARCH_ADDS_TOKENS_MAX)
            else:
                added = draw_tokens(rng, CODE_ADDS_TOKENS, CODE_ADDS_TOKENS_MAX)
            if problem + gathered + added <= CONTEXT_CAP_TOKENS:
                new = added  # the prompt extends the last one
            else:
                # Cut from the left: the prompt starts elsewhere, all of it is new input.
                new = max(problem, CONTEXT_CAP_TOKENS) + PROMPT_TEMPLATE_TOKENS
                reset = True
            gathered += added
        out = draw_tokens(rng, OUTPUT_TOKENS, OUTPUT_TOKENS_MAX)
        tool = "answer" if k == rounds - 1 else _next_tool(rng, used)
        used.append(tool)
        steps.append(StepSpec(new, out, tool, seconds(_LATENCY[tool].draw(rng), TOOL_S_MAX), reset))
    return ProgramSpec(
        id=f"{WORKLOAD}-{index:04d}",
        workload=WORKLOAD,
        arrival_s=arrival_s,
        prefix_id=SYSTEM_PROMPT_ID,
        prefix_tokens=SYSTEM_PROMPT_TOKENS,
        env=ENV,
        steps=tuple(steps),
    )


def generate(n_programs: int, seed: int) -> list[ProgramSpec]:
    """`n_programs` ToolOrchestra-on-HLE programs, deterministic in `seed`."""
    if n_programs < 1:
        raise ValueError(f"n_programs must be at least 1, got {n_programs}")
    arrivals = poisson_arrivals(n_programs, seed, ARRIVALS_PER_MIN, _ARRIVAL_STREAM)
    return [_program(i, arrivals[i], seed) for i in range(n_programs)]
