"""The request streams of the differential test, in the simulator's token model and as token ids.

A workload is programs of turns. A turn appends `new_tokens` to the program's context (after
its previous turn's prompt and output; after a reset, to the shared prompt alone), generates
`output_tokens`, and the next turn arrives `delay_steps` engine steps after it finished (a tool
call, measured in steps: the differential test has no clock). Token identity is what the
simulator assumes (thundersim.core.backend.Request): the shared prompt's tokens depend only on
its id and position, a program's on the program, its epoch and position, so vLLM's block hashes
and the simulator's chains name the same blocks. `to_stream` writes a workload as vLLM request
events (thundersim.conformance.vllm_side); thundersim.conformance.sim_side replays the same
turns as thundersim Requests.

The numbers inside each workload (seeds, sizes, pools) are test inputs, definitions chosen so
that the workload exercises the behaviour it is named for (tests/test_vllm_conformance.py
checks that it does, on vLLM's side); none is a measurement. The workloads are the ones the
conformance issue asks for, small enough to run in seconds:
multi-turn agents sharing a system prompt without pressure, eviction between turns, heavy
pressure with preemption, prompts longer than the token budget under pressure, a max_num_seqs
cap, and the bundled swe trace scaled down.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

FIRST_TOKEN_ID = 3  # provenance: definition — ids 0/1/2 are pad/bos/eos of the tiny model
VOCAB = 2048  # provenance: definition — the tiny Llama's vocabulary (engine_adapters/local.py)


@dataclass(frozen=True, slots=True)
class Turn:
    new_tokens: int
    output_tokens: int
    # steps between the previous turn's finish and this turn's arrival
    delay_steps: int = 0  # provenance: definition — none: the next turn comes at once
    reset: bool = False  # the context restarts from the shared prompt (a new KV chain)


@dataclass(frozen=True, slots=True)
class ConformanceProgram:
    id: str
    arrival_step: int
    turns: tuple[Turn, ...]
    prefix_id: str | None = None
    prefix_tokens: int = 0  # provenance: definition — no shared prompt


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The scheduler's knobs both sides get (vLLM's names)."""

    num_gpu_blocks: int
    block_size: int = 16  # provenance: spec — vLLM's default block size on GPUs
    max_num_batched_tokens: int = 256  # provenance: estimate — small enough to chunk prompts
    max_num_seqs: int = 64  # provenance: estimate — above every workload's concurrency


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    description: str
    config: EngineConfig
    programs: tuple[ConformanceProgram, ...] = field(default_factory=tuple)


def token(*key) -> int:
    """A token id that depends only on `key` (stable across processes; never a special id)."""
    text = "\x1f".join(str(k) for k in key)
    return FIRST_TOKEN_ID + zlib.crc32(text.encode()) % (VOCAB - FIRST_TOKEN_ID)


def request_id(program: ConformanceProgram, turn: int) -> str:
    return f"{program.id}/{turn}"


def chain_id(program: ConformanceProgram, epoch: int) -> str:
    return program.id if epoch == 0 else f"{program.id}#{epoch}"


def program_tokens(program: ConformanceProgram):
    """Yield (turn index, prompt token ids, output token ids, epoch) of each turn."""
    prefix = [token("prefix", program.prefix_id, i) for i in range(program.prefix_tokens)]
    context: list[int] = list(prefix)
    epoch = 0
    for i, turn in enumerate(program.turns):
        if turn.reset and i:
            epoch += 1
            context = list(prefix)
        chain = chain_id(program, epoch)
        start = len(context)
        context += [token(chain, p) for p in range(start, start + turn.new_tokens)]
        prompt = list(context)
        start = len(context)
        output = [token(chain, p) for p in range(start, start + turn.output_tokens)]
        context += output
        yield i, prompt, output, epoch


def to_stream(workload: Workload, max_model_len: int, model_config: dict) -> dict:
    """The workload as vllm_side's stream: its config and one event per turn."""
    events = []
    for program in workload.programs:
        for i, prompt, output, _ in program_tokens(program):
            event = {
                "request_id": request_id(program, i),
                "prompt_token_ids": prompt,
                "output_token_ids": output,
            }
            if i == 0:
                event["at_step"] = program.arrival_step
            else:
                event["after"] = request_id(program, i - 1)
                event["delay_steps"] = program.turns[i].delay_steps
            events.append(event)
    c = workload.config
    config = {
        "num_gpu_blocks": c.num_gpu_blocks,
        "block_size": c.block_size,
        "max_num_batched_tokens": c.max_num_batched_tokens,
        "max_num_seqs": c.max_num_seqs,
        "max_model_len": max_model_len,
        "model_config": model_config,
    }
    return {"config": config, "events": events}


def max_model_len(workload: Workload) -> int:
    """Room for the longest request, and a block to spare (so max_model_len never caps a
    request before its output length does). Refuses a workload whose longest request could
    never fit the pool (vLLM would wait for it forever)."""
    longest, which = 0, ""
    for program in workload.programs:
        for i, prompt, output, _ in program_tokens(program):
            if len(prompt) + len(output) > longest:
                longest, which = len(prompt) + len(output), request_id(program, i)
    c = workload.config
    usable = (c.num_gpu_blocks - 1) * c.block_size
    if longest > usable:
        raise ValueError(
            f"workload {workload.name}: {which} needs {longest} tokens, above the "
            f"{usable} of {c.num_gpu_blocks - 1} usable blocks"
        )
    return (-(-longest // c.block_size) + 1) * c.block_size


# ---- the workloads ---------------------------------------------------------------------------


def _agents(
    rng: random.Random,
    n: int,
    turns: int,
    prefix: tuple[str, int] | None,
    new: tuple[int, int],
    out: tuple[int, int],
    delay: tuple[int, int],
    arrive_every: int,
) -> tuple[ConformanceProgram, ...]:
    programs = []
    for p in range(n):
        ts = tuple(
            Turn(rng.randint(*new), rng.randint(*out), rng.randint(*delay) if t else 0)
            for t in range(turns)
        )
        pid, ptok = prefix if prefix else (None, 0)
        programs.append(ConformanceProgram(f"a{p:02d}", p * arrive_every, ts, pid, ptok))
    return tuple(programs)


def shared_prompt() -> Workload:
    rng = random.Random(1)
    return Workload(
        "shared_prompt",
        "8 agents on one 100-token system prompt, 4 turns each, started together; no pressure",
        EngineConfig(num_gpu_blocks=512),
        _agents(rng, 8, 4, ("sys", 100), (20, 80), (5, 30), (0, 4), arrive_every=0),
    )


def eviction_between_turns() -> Workload:
    rng = random.Random(2)
    return Workload(
        "eviction_between_turns",
        "12 agents on a shared prompt with long tools (20-60 steps): their cached context is "
        "evicted by others' turns between their own",
        EngineConfig(num_gpu_blocks=70),
        _agents(rng, 12, 5, ("sys", 64), (30, 120), (10, 40), (20, 60), arrive_every=3),
    )


def preemption() -> Workload:
    rng = random.Random(3)
    return Workload(
        "preemption",
        "10 agents with long outputs on a pool that holds about 3 of them: decode growth "
        "preempts (recompute), restarts hit their own cached blocks",
        EngineConfig(num_gpu_blocks=48),
        _agents(rng, 10, 2, ("sys", 32), (40, 100), (60, 140), (0, 5), arrive_every=1),
    )


def long_prompts() -> Workload:
    rng = random.Random(4)
    return Workload(
        "long_prompts",
        "6 agents whose prompts (150-500 tokens) exceed the 64-token budget, under pressure: "
        "chunked prefill, full-prompt admission, preemption mid-prefill",
        EngineConfig(num_gpu_blocks=60, max_num_batched_tokens=64),
        _agents(rng, 6, 2, ("doc", 150), (100, 300), (10, 60), (0, 10), arrive_every=2),
    )


def seq_cap() -> Workload:
    rng = random.Random(5)
    return Workload(
        "max_num_seqs_cap",
        "12 single-turn and two-turn requests with max_num_seqs=3: the cap, not memory, queues",
        EngineConfig(num_gpu_blocks=256, max_num_seqs=3),
        _agents(rng, 12, 2, None, (10, 60), (5, 40), (0, 3), arrive_every=0),
    )


# provenance: estimate — the swe trace's tokens divided by this fit the tiny engine's pool
SWE_TOKEN_SCALE = 32
# provenance: estimate — a tool second as engine steps (a step of a small batch: ~10 ms)
SWE_STEPS_PER_TOOL_S = 2


def swe_scaled(trace: Path | None = None, programs: int = 12) -> Workload:
    """The first programs of the bundled swe trace, tokens divided by SWE_TOKEN_SCALE, tool
    seconds as SWE_STEPS_PER_TOOL_S steps each, all arriving at step 0, on a tight pool."""
    from thundersim.lab.data import find
    from thundersim.traces.loader import load_trace

    specs = load_trace(trace or find("traces/swe.jsonl", "trace"))[:programs]
    out = []
    for spec in specs:
        turns, prev_tool = [], 0.0
        for i, step in enumerate(spec.steps[:8]):
            turns.append(
                Turn(
                    max(1, step.input_tokens // SWE_TOKEN_SCALE),
                    max(1, step.output_tokens // SWE_TOKEN_SCALE),
                    int(prev_tool * SWE_STEPS_PER_TOOL_S) if i else 0,
                    step.reset,
                )
            )
            prev_tool = step.tool_s
        prefix = max(0, spec.prefix_tokens // SWE_TOKEN_SCALE)
        out.append(
            ConformanceProgram(spec.id, 0, tuple(turns), spec.prefix_id if prefix else None, prefix)
        )
    return Workload(
        "swe_scaled",
        f"the bundled swe trace's first {programs} programs (8 turns each), tokens / "
        f"{SWE_TOKEN_SCALE}, on a pool of about 3 of their contexts",
        EngineConfig(num_gpu_blocks=48),
        tuple(out),
    )


WORKLOADS = {  # name -> maker (the makers build on demand: swe_scaled reads the trace)
    "shared_prompt": shared_prompt,
    "eviction_between_turns": eviction_between_turns,
    "preemption": preemption,
    "long_prompts": long_prompts,
    "max_num_seqs_cap": seq_cap,
    "swe_scaled": swe_scaled,
}


def all_workloads() -> list[Workload]:
    return [make() for make in WORKLOADS.values()]
