"""OpenAI-style chat-completion logs (JSONL, one record per LLM call) → trace v1.

A record (one per line; unknown keys are ignored)::

    {"program_id": "task-17",                # the agent program; name set by program_field, also
                                             # read from "metadata" or "extra_body" (top level or
                                             # inside "request")
     "request": {"model": "...", "messages": [{"role": "system", "content": "..."}, ...]},
     "response": {"choices": [{"message": {"role": "assistant", "content": "...",
                                           "tool_calls": [...]}}],
                  "usage": {"prompt_tokens": 1200, "completion_tokens": 80,
                            "prompt_tokens_details": {"cached_tokens": 1024}}},
     "start": 1718000000.0, "end": 1718000002.5,   # optional: request sent / response done (unix s)
     "tool": "bash", "tool_s": 1.8}                # optional: the tool run after this call

How it maps:

- programs: records grouped by program id (across every input file), ordered by ``start`` when all
  of a program's records have one, else by file and line order. Programs are listed in order of
  their first record.
- tokens: from ``usage`` when present; a record without ``usage`` is estimated from its text
  (prompt = all request messages, completion = the first choice's message, 4 characters per
  token). Call i's new input is ``prompt_tokens(i) - (prompt_tokens(i-1) +
  completion_tokens(i-1))``; below 1 the context was cut (condensation, truncation), so the step
  is marked ``reset`` and its input is ``prompt_tokens(i) - prefix``. The first call's input is
  ``prompt_tokens(0) - prefix``. ``cached_tokens`` says what the serving engine had cached; it is
  validated but plays no part in the trace (the simulator works out caching itself).
  Caveat: reasoning models count hidden reasoning in ``completion_tokens`` but do not send it
  back, so their next prompt is shorter than the rule expects and may read as a reset.
- shared prefix: the leading system (or developer) messages of the program's first call; id hashed
  from their text, tokens estimated (and kept below the smallest prompt of the program).
- tool: the record's ``tool``, else the first tool call's function name in the response; a call
  with neither gets "" (with no tool time) or "unknown" (when time passes before the next call).
- tool_s: the record's ``tool_s``; else, when timestamps exist, the gap between this call's
  ``end`` and the next call's ``start`` (the time the agent spent outside the LLM); else 0.
- arrival_s: the program's first ``start`` minus the earliest ``start`` over all programs (0
  without timestamps). The environment is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thundersim.traces.converters._common import (
    estimate_tokens,
    fail,
    make_step,
    message_text,
    need,
    need_int,
    number,
    prefix_id_for,
    read_jsonl,
    reconstruct_inputs,
    seconds,
    tool_call_name,
)
from thundersim.traces.schema import EnvSpec, ProgramSpec, TraceError, _json_type, _str

__all__ = ["convert"]


@dataclass(slots=True)
class _Call:
    location: str  # "path:line", for errors about it
    order: int  # position over all files, for stable ordering
    prompt: int
    completion: int
    prefix_texts: list[str]
    start: float | None
    end: float | None
    tool: str
    tool_s: float | None


def _program_id(rec: dict, field: str, at: str) -> str:
    request = rec.get("request") if isinstance(rec.get("request"), dict) else {}
    for container, name in (
        (rec, field),
        (rec.get("metadata"), f"metadata.{field}"),
        (rec.get("extra_body"), f"extra_body.{field}"),
        (request.get("metadata"), f"request.metadata.{field}"),
        (request.get("extra_body"), f"request.extra_body.{field}"),
    ):
        if isinstance(container, dict) and container.get(field) is not None:
            value = container[field]
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            return _str(value, at, name)
    raise fail(at, "missing required field (top level, metadata or extra_body)", field)


def _parse(rec: dict, at: str, order: int) -> _Call:
    """One record's call, every field checked (in the order the format lists them)."""
    request = need(rec, "request", at, "request")
    if not isinstance(request, dict):
        raise fail(at, f"expected an object, got {_json_type(request)}", "request")
    response = need(rec, "response", at, "response")
    if not isinstance(response, dict):
        raise fail(at, f"expected an object, got {_json_type(response)}", "response")
    usage = response.get("usage")
    messages = _request_messages(request, usage, at)
    prefix_texts = []
    for k, msg in enumerate(messages):
        if not (isinstance(msg, dict) and msg.get("role") in ("system", "developer")):
            break
        prefix_texts.append(message_text(msg, at, f"request.messages[{k}]"))
    message = _first_choice(response, at)
    if usage is not None:
        prompt, completion = _usage_counts(usage, at)
    else:
        prompt, completion = _estimated_counts(messages, message, at)

    start = number(rec["start"], at, "start") if rec.get("start") is not None else None
    end = number(rec["end"], at, "end") if rec.get("end") is not None else None
    if start is not None and end is not None and end < start:
        raise fail(at, f"response end {end} is before request start {start}", "end")

    tool = ""
    if rec.get("tool") is not None:
        tool = _str(rec["tool"], at, "tool", allow_empty=True)
    elif message is not None:
        tool = tool_call_name(message)
    tool_s = seconds(rec["tool_s"], at, "tool_s") if rec.get("tool_s") is not None else None
    if tool_s and not tool:
        raise fail(at, f"tool_s is {tool_s} but no tool is named", "tool")
    return _Call(at, order, prompt, completion, prefix_texts, start, end, tool, tool_s)


def _request_messages(request: dict, usage: Any, at: str) -> list:
    """The request's messages ([] when absent, which only a record with usage may be)."""
    messages = request.get("messages")
    if messages is None and usage is None:
        raise fail(at, "missing required field (needed without usage)", "request.messages")
    if messages is not None and not isinstance(messages, list):
        raise fail(at, f"expected an array, got {_json_type(messages)}", "request.messages")
    return messages or []


def _first_choice(response: dict, at: str) -> dict | None:
    """The first choice's message, or None when the response has no choices."""
    choices = response.get("choices")
    if choices is None:
        return None
    if not isinstance(choices, list):
        raise fail(at, f"expected an array, got {_json_type(choices)}", "response.choices")
    if not choices:
        return None
    message = need(choices[0], "message", at, "response.choices[0].message")
    if not isinstance(message, dict):
        raise fail(
            at,
            f"expected an object, got {_json_type(message)}",
            "response.choices[0].message",
        )
    return message


def _usage_counts(usage: Any, at: str) -> tuple[int, int]:
    """(prompt, completion) tokens from ``usage``; cached tokens are checked, not kept."""
    if not isinstance(usage, dict):
        raise fail(at, f"expected an object, got {_json_type(usage)}", "response.usage")
    prompt = need_int(usage, "prompt_tokens", at, "response.usage.prompt_tokens", minimum=1)
    completion = need_int(usage, "completion_tokens", at, "response.usage.completion_tokens")
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        cached = need_int(
            details, "cached_tokens", at, "response.usage.prompt_tokens_details.cached_tokens"
        )
        if cached > prompt:
            raise fail(
                at,
                f"{cached} cached tokens but only {prompt} prompt tokens",
                "response.usage.prompt_tokens_details.cached_tokens",
            )
    return prompt, completion


def _estimated_counts(messages: list, message: dict | None, at: str) -> tuple[int, int]:
    """(prompt, completion) tokens estimated from the text of a record without usage."""
    if message is None:
        raise fail(at, "no usage and no choices[0].message to estimate from", "response.choices")
    prompt = sum(
        estimate_tokens(message_text(msg, at, f"request.messages[{k}]"))
        for k, msg in enumerate(messages)
    )
    text = message_text(message, at, "response.choices[0].message")
    reasoning = message.get("reasoning_content")
    return prompt, estimate_tokens(text + (reasoning if isinstance(reasoning, str) else ""))


def convert(
    paths: list[Path], workload: str = "chat", program_field: str = "program_id"
) -> list[ProgramSpec]:
    """One program per distinct program id over all records of all files."""
    groups: dict[str, list[_Call]] = {}
    order = 0
    for path in paths:
        for lineno, rec in read_jsonl(Path(path)):
            at = f"{path}:{lineno}"
            pid = _program_id(rec, program_field, at)
            groups.setdefault(pid, []).append(_parse(rec, at, order))
            order += 1
    if not groups:
        raise TraceError(f"{', '.join(str(p) for p in paths)}: no records")

    for calls in groups.values():
        if all(c.start is not None for c in calls):
            calls.sort(key=lambda c: (c.start, c.order))
    starts = [c[0].start for c in groups.values() if c[0].start is not None]
    first_start = min(starts) if starts else 0.0
    return [_program(pid, calls, workload, first_start) for pid, calls in groups.items()]


def _program(pid: str, calls: list[_Call], workload: str, first_start: float) -> ProgramSpec:
    """A program from its calls in order; its arrival is its first start after `first_start`,
    the earliest over all programs."""
    prefix_texts = calls[0].prefix_texts
    prompts = [c.prompt for c in calls]
    outputs = [c.completion for c in calls]
    prefix_tokens = max(0, min(sum(estimate_tokens(t) for t in prefix_texts), min(prompts) - 1))
    inputs = reconstruct_inputs(prompts, outputs, prefix_tokens)
    steps = []
    for i, call in enumerate(calls):
        following = calls[i + 1] if i + 1 < len(calls) else None
        tool_s = call.tool_s
        if tool_s is None:
            tool_s = 0.0
            if following is not None and call.end is not None and following.start is not None:
                tool_s = max(0.0, following.start - call.end)
        tool = call.tool or ("unknown" if tool_s > 0 else "")
        new, reset = inputs[i]
        steps.append(make_step(new, call.completion, tool, tool_s, reset))
    first = calls[0].start
    return ProgramSpec(
        id=pid,
        workload=workload,
        arrival_s=first - first_start if first is not None else 0.0,
        prefix_id=prefix_id_for("\x00".join(prefix_texts)) if prefix_tokens > 0 else None,
        prefix_tokens=prefix_tokens,
        env=EnvSpec(),
        steps=tuple(steps),
    )
