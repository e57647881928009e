"""The OpenHands CodeAct agent loop, shared by the workloads that run that agent.

A program is one task: a shared system prompt, the task wrapped in the harness's instruction,
then a loop of function calls, each followed by its observation, ending in `finish`. Now and
then the history is condensed (a context reset): the task, an LLM-written summary and the newer
part of the conversation are re-sent. Everything that differs between two such workloads is a
`CodeActProfile`; openhands.py (SWE-bench) and science.py (ScienceAgentBench) each build one
from their cited constants.

Randomness: one stream for arrivals and one per program, derived from the seed, so
``codeact_generate(profile, n, seed)[:k] == codeact_generate(profile, k, seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

from .distributions import Distribution, Lognormal, draw_tokens, poisson_arrivals, seconds

# Stream labels mixed into the seed, so each subsystem has its own independent stream.
_ARRIVAL_STREAM = 0  # provenance: definition — a random-stream label
_PROGRAM_STREAM = 1  # provenance: definition — a random-stream label


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool of the agent: how often it is picked, how long it runs, how much it prints."""

    name: str
    fraction: float  # share of the non-final actions
    latency: Distribution  # seconds
    # Its observation's size relative to the workload's median.
    observation_scale: float = 1.0  # provenance: definition — neutral default (no rescaling)


@dataclass(frozen=True, slots=True)
class CodeActProfile:
    """Everything that differs between two OpenHands workloads; see openhands.py's constants."""

    workload: str
    prefix_id: str
    prefix_tokens: int
    turns: Lognormal
    turns_min: int
    turns_max: int
    task_tokens: Lognormal
    task_template_tokens: int
    task_tokens_max: int
    observation_tokens: Lognormal
    observation_tokens_max: int
    verbosity_sigma: float
    output_tokens: Lognormal
    output_tokens_max: int
    tools: tuple[Tool, ...]
    finish: Tool
    tool_s_max: float
    reset_probability: float
    reset_min_turn: int
    summary_tokens: Lognormal
    summary_tokens_max: int
    keep_fraction: float
    max_context_tokens: int
    env_prep_s: Lognormal
    env_disk_floor_bytes: int
    env_disk_excess_bytes: Lognormal
    env_ports: int


def codeact_program(
    profile: CodeActProfile, index: int, arrival_s: float, rng: np.random.Generator
) -> ProgramSpec:
    """One program of an OpenHands-style workload, drawn from `rng` (the program's own stream)."""
    turns = max(profile.turns_min, min(profile.turns_max, round(profile.turns.draw(rng))))
    verbosity = Lognormal(1.0, profile.verbosity_sigma).draw(rng)  # per task: some repos print more
    steps = _steps(profile, turns, verbosity, rng)
    # The last call's action is the finish, whatever tool it would otherwise have used.
    last = steps[-1]
    steps[-1] = StepSpec(
        last.input_tokens,
        last.output_tokens,
        profile.finish.name,
        seconds(profile.finish.latency.draw(rng), profile.tool_s_max),
        last.reset,
    )
    disk = profile.env_disk_floor_bytes + round(profile.env_disk_excess_bytes.draw(rng))
    env = EnvSpec(
        prep_s=round(profile.env_prep_s.draw(rng), 3), disk_bytes=disk, ports=profile.env_ports
    )
    return ProgramSpec(
        id=f"{profile.workload}-{index:04d}",
        workload=profile.workload,
        arrival_s=arrival_s,
        prefix_id=profile.prefix_id,
        prefix_tokens=profile.prefix_tokens,
        env=env,
        steps=tuple(steps),
    )


def _steps(
    profile: CodeActProfile, turns: int, verbosity: float, rng: np.random.Generator
) -> list[StepSpec]:
    """Up to `turns` calls: the task, then one observation per call, condensed when the dice
    say so or the window would overflow; the run ends early if even that does not fit."""
    fractions = np.array([tool.fraction for tool in profile.tools])
    fractions = fractions / fractions.sum()
    steps: list[StepSpec] = []
    task = draw_tokens(rng, profile.task_tokens, profile.task_tokens_max)
    task += profile.task_template_tokens
    context = profile.prefix_tokens  # the prompt of the next call, before its new input
    history = 0  # tokens after the task in the current context (what condensation shrinks)
    previous = profile.tools[0]
    for k in range(turns):
        reset, observation = False, 0
        if k == 0:
            new = task
        else:
            scale = verbosity * previous.observation_scale
            observation = draw_tokens(
                rng, profile.observation_tokens, profile.observation_tokens_max, scale
            )
            new = observation
            condense = k >= profile.reset_min_turn and rng.random() < profile.reset_probability
            # A call that would overflow the window is condensed first, whatever the dice say.
            overflow = context + new + profile.output_tokens.median > profile.max_context_tokens
            if condense or overflow:
                # The history becomes the task (kept first), an LLM-written summary and the
                # newer part of the conversation, all re-sent: none of the old KV is reused.
                summary = draw_tokens(rng, profile.summary_tokens, profile.summary_tokens_max)
                kept = round(profile.keep_fraction * history)
                new, reset = task + summary + kept + observation, True
                context, history = profile.prefix_tokens, summary + kept
        out = draw_tokens(rng, profile.output_tokens, profile.output_tokens_max)
        if steps and context + new + out > profile.max_context_tokens:
            break  # even condensed it does not fit: the run ends on a context-limit error
        context += new + out
        history += observation + out
        tool = profile.tools[int(rng.choice(len(profile.tools), p=fractions))]
        tool_s = seconds(tool.latency.draw(rng), profile.tool_s_max)
        steps.append(StepSpec(new, out, tool.name, tool_s, reset))
        previous = tool
    return steps


def codeact_generate(
    profile: CodeActProfile, n_programs: int, seed: int, arrivals_per_min: float
) -> list[ProgramSpec]:
    """`n_programs` programs of `profile`, arriving as a Poisson stream, deterministic in
    `seed`."""
    if n_programs < 1:
        raise ValueError(f"n_programs must be at least 1, got {n_programs}")
    arrivals = poisson_arrivals(n_programs, seed, arrivals_per_min, _ARRIVAL_STREAM)
    return [
        codeact_program(profile, i, arrivals[i], np.random.default_rng([seed, _PROGRAM_STREAM, i]))
        for i in range(n_programs)
    ]
