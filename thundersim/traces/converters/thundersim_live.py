"""thundersim's live-mode step log (JSONL) → trace v1: the contract the live driver writes.

One JSON object per line, one line per *completed step* (an LLM call and the tool after it),
written when the step completes, so lines of concurrent programs interleave and steps of one
program appear in order of completion. Every key below is required; keys not listed are ignored
(the driver may add more of the steps table, e.g. ``backend`` or ``queue_s``). Times are seconds;
``*_t`` are on the run's clock (seconds since the run started, ``cluster.now``), the same clock
as the simulator's steps table (thundersim/metrics/recorder.py STEP_COLUMNS).

==============  ===========  ====================================================================
key             type         meaning (STEP_COLUMNS name where it is the same quantity)
==============  ===========  ====================================================================
program_id      str          the agent program (``program``)
workload        str          its workload name (the programs table's ``workload``)
step            int >= 0     index of the LLM call within the program, from 0 (``step``)
prompt_tokens   int >= 1     prompt length of the call as the engine counted it: the full context,
                             shared prefix included (``prompt_tokens``, usage.prompt_tokens)
cached_tokens   int >= 0     prompt tokens served from the prefix cache (``cached_tokens``)
output_tokens   int >= 1     tokens the call generated (``output_tokens``)
tool            str          tool run after the call, "" for none (``tool``)
tool_s          float >= 0   seconds from the response to the step's end: the tool's duration
                             (``tool_s`` = done_t - response_t)
prefix_id       str | null   the program's shared-prefix id (the trace's ``prefix.id``)
prefix_tokens   int >= 0     its length in tokens (the trace's ``prefix.tokens``)
prep_s          float >= 0   environment preparation before the program's first call; nonzero on
                             step 0 only (``prep_s``)
disk_bytes      int >= 0     disk the program's environment holds (the trace's ``env.disk_bytes``)
ports           int >= 0     ports it holds (the trace's ``env.ports``)
arrival_s       float >= 0   when the program arrived, on the run's clock (programs ``arrival_t``)
ready_t         float        the call was ready (previous tool done / environment ready) (``ready_t``)
sent_t          float        the call was sent to an engine (``sent_t``; sent_t - ready_t = hold_s)
done_t          float        the step completed: the tool returned (``done_t``)
==============  ===========  ====================================================================

``program_id``, ``workload``, ``prefix_id``, ``prefix_tokens``, ``disk_bytes``, ``ports`` and
``arrival_s`` are properties of the program and must be equal on all of its lines.

Reconstruction (as the openai-chat converter): a program's steps, sorted by ``step``, must be
0..n-1 each exactly once (a run cut short gives a shorter program). New input of call i =
``prompt_tokens(i) - (prompt_tokens(i-1) + output_tokens(i-1))``; below 1 the program reset its
context before the call, so the step gets ``reset`` and input ``prompt_tokens(i) - prefix_tokens``;
call 0's input is ``prompt_tokens(0) - prefix_tokens``. The reconstructed trace therefore makes
every call's prompt exactly the logged one. Tool, tool seconds, prefix, environment (``prep_s``
of step 0) and arrival are copied. Programs come out in order of arrival (then first line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thundersim.traces.converters._common import (
    fail,
    make_step,
    need,
    need_int,
    need_str,
    number,
    read_jsonl,
    reconstruct_inputs,
    seconds,
)
from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec, TraceError, _json_type

__all__ = ["LIVE_LOG_FIELDS", "PROGRAM_FIELDS", "convert"]

# Every key a live-log line carries, in the order the driver should write them.
LIVE_LOG_FIELDS = (
    "program_id",
    "workload",
    "step",
    "prompt_tokens",
    "cached_tokens",
    "output_tokens",
    "tool",
    "tool_s",
    "prefix_id",
    "prefix_tokens",
    "prep_s",
    "disk_bytes",
    "ports",
    "arrival_s",
    "ready_t",
    "sent_t",
    "done_t",
)
# Keys that describe the program, not the step: equal on all of a program's lines.
PROGRAM_FIELDS = ("workload", "prefix_id", "prefix_tokens", "disk_bytes", "ports", "arrival_s")


@dataclass(slots=True)
class _Line:
    location: str  # "path:line", for errors about it
    order: int
    step: int
    prompt: int
    output: int
    tool: str
    tool_s: float
    prep_s: float
    program: tuple  # PROGRAM_FIELDS values


def _parse(rec: dict, at: str, order: int) -> tuple[str, _Line]:
    for key in LIVE_LOG_FIELDS:
        if key not in rec:
            raise fail(at, "missing required field", key)
    pid = need_str(rec, "program_id", at, "program_id")
    workload = need_str(rec, "workload", at, "workload")
    step = need_int(rec, "step", at, "step")
    prompt = need_int(rec, "prompt_tokens", at, "prompt_tokens", minimum=1)
    cached = need_int(rec, "cached_tokens", at, "cached_tokens")
    if cached > prompt:
        raise fail(at, f"{cached} cached tokens but only {prompt} prompt tokens", "cached_tokens")
    output = need_int(rec, "output_tokens", at, "output_tokens", minimum=1)
    tool = rec["tool"]
    if not isinstance(tool, str):
        raise fail(at, f"expected a string, got {_json_type(tool)}", "tool")
    tool_s = seconds(rec["tool_s"], at, "tool_s")
    if tool_s > 0 and not tool:
        raise fail(at, f"tool_s is {tool_s} but no tool is named", "tool")
    prefix_id = rec["prefix_id"]
    if prefix_id is not None:
        prefix_id = need_str(rec, "prefix_id", at, "prefix_id")
    prefix_tokens = need_int(rec, "prefix_tokens", at, "prefix_tokens")
    if prefix_tokens > 0 and prefix_id is None:
        raise fail(at, f"{prefix_tokens} prefix tokens but no prefix id", "prefix_id")
    if prompt <= prefix_tokens:
        raise fail(
            at,
            f"prompt of {prompt} tokens is not longer than the {prefix_tokens}-token prefix",
            "prompt_tokens",
        )
    prep_s = seconds(rec["prep_s"], at, "prep_s")
    disk = need_int(rec, "disk_bytes", at, "disk_bytes")
    ports = need_int(rec, "ports", at, "ports")
    arrival = seconds(rec["arrival_s"], at, "arrival_s")
    ready, sent, done = (
        number(need(rec, k, at, k), at, k) for k in ("ready_t", "sent_t", "done_t")
    )
    if not ready <= sent <= done:
        raise fail(at, f"times out of order: ready {ready}, sent {sent}, done {done}", "sent_t")
    program = (workload, prefix_id, prefix_tokens, disk, ports, arrival)
    return pid, _Line(at, order, step, prompt, output, tool, tool_s, prep_s, program)


def convert(paths: list[Path], workload: str | None = None) -> list[ProgramSpec]:
    """One program per ``program_id`` over all lines of all files; `workload` overrides the
    logged workload name when given."""
    groups = _group_lines(paths)
    programs = [_program(pid, lines, workload) for pid, lines in groups.items()]
    first = {p.id: min(ln.order for ln in groups[p.id]) for p in programs}
    programs.sort(key=lambda p: (p.arrival_s, first[p.id]))
    return programs


def _group_lines(paths: list[Path]) -> dict[str, list[_Line]]:
    """Every line of every file by program id, each program's properties equal on all of its
    lines."""
    groups: dict[str, list[_Line]] = {}
    order = 0
    for path in paths:
        for lineno, rec in read_jsonl(Path(path)):
            pid, line = _parse(rec, f"{path}:{lineno}", order)
            order += 1
            lines = groups.setdefault(pid, [])
            if lines and line.program != lines[0].program:
                key = next(
                    k
                    for k, a, b in zip(PROGRAM_FIELDS, line.program, lines[0].program, strict=True)
                    if a != b
                )
                raise fail(
                    line.location,
                    f"program {pid!r} has {key} {_get(line, key)!r} here but "
                    f"{_get(lines[0], key)!r} at {lines[0].location}",
                    key,
                )
            lines.append(line)
    if not groups:
        raise TraceError(f"{', '.join(str(p) for p in paths)}: no records")
    return groups


def _program(pid: str, lines: list[_Line], workload: str | None) -> ProgramSpec:
    """The program of one id's lines, which must hold steps 0..n-1 each exactly once."""
    lines.sort(key=lambda ln: (ln.step, ln.order))
    for k, line in enumerate(lines):
        if line.step != k:
            if line.step < k:
                raise fail(
                    line.location,
                    f"step {line.step} of program {pid!r} logged twice (also at {lines[k - 1].location})",
                    "step",
                )
            raise fail(
                line.location, f"program {pid!r} has no step {k} before step {line.step}", "step"
            )
    logged_workload, prefix_id, prefix_tokens, disk, ports, arrival = lines[0].program
    inputs = reconstruct_inputs(
        [ln.prompt for ln in lines], [ln.output for ln in lines], prefix_tokens
    )
    steps: list[StepSpec] = [
        make_step(new, ln.output, ln.tool, ln.tool_s, reset)
        for ln, (new, reset) in zip(lines, inputs, strict=True)
    ]
    return ProgramSpec(
        id=pid,
        workload=workload or logged_workload,
        arrival_s=arrival,
        prefix_id=prefix_id,
        prefix_tokens=prefix_tokens,
        env=EnvSpec(prep_s=lines[0].prep_s, disk_bytes=disk, ports=ports),
        steps=tuple(steps),
    )


def _get(line: _Line, key: str) -> Any:
    return line.program[PROGRAM_FIELDS.index(key)]
