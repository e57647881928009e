"""SWE-agent trajectories (``.traj``) → trace v1. One file is one program.

The format (SWE-agent 0.7 and 1.x write the same outline)::

    {"trajectory": [                       # one entry per LLM call, in order
        {"response": "raw model output",   # what the model generated
         "thought": "...", "action": "edit 12:14\\n...",   # parsed from the response
         "observation": "tool output",     # what the action printed
         "execution_time": 1.23,           # seconds the action ran (newer versions only)
         "query": [{"role": ..., "content": ...}, ...],    # messages sent for this call (1.x)
         "state": ..., "extra_info": ...}, ...],
     "history": [{"role": "system"|"user"|"assistant"|"tool", "content": str | [parts],
                  "is_demo": bool, "message_type": "system_prompt"|"demonstration"|..., ...}],
     "info": {"exit_status": "submitted", "submission": "...",
              "model_stats": {"tokens_sent": ..., "tokens_received": ..., "api_calls": ...}}}

How it maps:

- steps: one per trajectory entry (each entry is one LLM call).
- output tokens: ``estimate_tokens(response)`` (``thought`` when there is no response), plus the
  action's text when it is not inside the response (function-calling models put it in a tool call).
- input tokens: the tokens of the messages that are new since the previous call: the non-assistant
  messages after the last assistant message of the step's ``query`` (1.x), else the step's chunk of
  ``history`` (the messages between two assistant turns, used when ``history`` has exactly one
  non-demo assistant turn per step), else the previous step's ``observation``. The first call's
  input is everything after the shared prefix up to the first assistant turn (the issue statement
  and instance template), from its query or the history.
- shared prefix: the leading system message(s) together with the demonstrations that follow them
  (``is_demo`` or ``message_type: demonstration``): both are the same text for every instance of a
  configuration, so programs run with the same config share them. Its id is a hash of that text.
- tool: the first word of ``action`` ("edit", "python", "submit", "str_replace_editor", ...; ""
  for an empty action); tool_s: ``execution_time`` when present, else 0 (SWE-agent before 1.0
  does not record it: such traces need tool times from elsewhere, e.g. ``trace gen``'s models).
- arrival 0 and an empty environment for every program: a ``.traj`` has no timestamps.

Not modelled: ``info.model_stats`` holds only run totals (``tokens_sent`` is the sum of every
call's full prompt) so it cannot give per-call counts and is not used; calls SWE-agent re-queried
after a format error appear as ordinary steps, and history processors that elide old
observations shrink the real context below the trace's cumulative one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thundersim.traces.converters._common import (
    estimate_tokens,
    fail,
    load_json,
    make_step,
    message_text,
    one_program_per_file,
    prefix_id_for,
    seconds,
    where,
)
from thundersim.traces.schema import EnvSpec, ProgramSpec, _json_type

__all__ = ["convert"]


def convert(paths: list[Path], workload: str = "swe") -> list[ProgramSpec]:
    """One program per ``.traj`` file; the program id is the file name without ``.traj``."""
    return one_program_per_file(paths, lambda path: _convert_file(path, workload))


def _is_prefix_message(msg: Any) -> bool:
    return isinstance(msg, dict) and (
        msg.get("role") == "system"
        or msg.get("is_demo") is True
        or msg.get("message_type") in ("system_prompt", "demonstration")
    )


def _is_call(msg: Any) -> bool:
    """An assistant turn of the agent itself (not one inside a demonstration)."""
    return isinstance(msg, dict) and msg.get("role") == "assistant" and not _is_prefix_message(msg)


def _messages(value: Any, path: Path, at_obj: Any, name: str) -> list:
    if not isinstance(value, list):
        raise fail(
            where(path, at_obj), f"expected an array of messages, got {_json_type(value)}", name
        )
    return value


def _split_prefix(messages: list, path: Path, name: str) -> tuple[list[str], int]:
    """Texts of the leading prefix messages and the index of the first message after them."""
    texts = []
    k = 0
    while k < len(messages) and _is_prefix_message(messages[k]):
        texts.append(message_text(messages[k], where(path, messages[k]), f"{name}[{k}]"))
        k += 1
    return texts, k


def _tokens_of(messages: list, start: int, path: Path, name: str) -> int:
    total = 0
    for k in range(start, len(messages)):
        msg = messages[k]
        total += estimate_tokens(message_text(msg, where(path, msg), f"{name}[{k}]"))
    return total


def _query_input(query: list, prefix_end: int, path: Path, name: str) -> int:
    """Tokens of the messages after the last (non-demo) assistant turn of a call's query."""
    last = max((k for k, m in enumerate(query) if _is_call(m)), default=prefix_end - 1)
    return _tokens_of(query, max(last + 1, prefix_end), path, name)


def _history_chunks(history: list, prefix_end: int, path: Path) -> tuple[list[int], int]:
    """Input tokens per call (the non-assistant messages before each assistant turn), and the
    tokens of the messages after the last one."""
    chunks, pending = [], 0
    for k in range(prefix_end, len(history)):
        msg = history[k]
        if _is_call(msg):
            chunks.append(pending)
            pending = 0
        else:
            pending += estimate_tokens(message_text(msg, where(path, msg), f"history[{k}]"))
    return chunks, pending


def _convert_file(path: Path, workload: str) -> ProgramSpec:
    data = load_json(path)
    trajectory = _trajectory_of(data, path)
    history = data.get("history")
    if history is not None:
        history = _messages(history, path, data, "history")

    # The shared prefix: from the first call's query if there is one, else from the history.
    first_query = _query_of(trajectory, 0, path)
    prefix_source, prefix_name = (
        (first_query, "trajectory[0].query") if first_query is not None else (history, "history")
    )
    prefix_texts: list[str] = []
    if prefix_source is not None:
        prefix_texts, _ = _split_prefix(prefix_source, path, prefix_name)

    chunks: list[int] | None = None
    first_input: int | None = None  # the first call's input, from the history
    if history is not None:
        _, history_start = _split_prefix(history, path, "history")
        chunks, rest = _history_chunks(history, history_start, path)
        first_input = chunks[0] if chunks else rest
        if len(chunks) != len(trajectory):
            chunks = None  # history does not line up with the calls (re-queries, subroutines)

    steps = []
    for k, step in enumerate(trajectory):
        input_tokens = _input_tokens(data, trajectory, k, path, chunks, first_input)
        output_tokens, action = _output_of(step, where(path, step), f"trajectory[{k}]")
        words = action.split()
        tool = words[0] if words else ""
        tool_s = 0.0
        if step.get("execution_time") is not None:
            tool_s = seconds(
                step["execution_time"], where(path, step), f"trajectory[{k}].execution_time"
            )
        steps.append(make_step(input_tokens, output_tokens, tool, tool_s))

    program_id = path.name.removesuffix(".traj") if path.name.endswith(".traj") else path.stem
    prefix_text = "\x00".join(prefix_texts)
    prefix_tokens = sum(estimate_tokens(text) for text in prefix_texts)
    return ProgramSpec(
        id=program_id,
        workload=workload,
        arrival_s=0.0,
        prefix_id=prefix_id_for(prefix_text) if prefix_tokens > 0 else None,
        prefix_tokens=prefix_tokens,
        env=EnvSpec(),
        steps=tuple(steps),
    )


def _trajectory_of(data: Any, path: Path) -> list[dict]:
    """The file's ``trajectory``: a non-empty array of step objects."""
    if not isinstance(data, dict):
        raise fail(f"{path}:1", f"expected a JSON object, got {_json_type(data)}")
    if "trajectory" not in data:
        raise fail(where(path, data), "missing required field", "trajectory")
    trajectory = data["trajectory"]
    if not isinstance(trajectory, list):
        raise fail(
            where(path, data), f"expected an array, got {_json_type(trajectory)}", "trajectory"
        )
    if not trajectory:
        raise fail(where(path, data), "a trajectory needs at least one step", "trajectory")
    for k, step in enumerate(trajectory):
        if not isinstance(step, dict):
            raise fail(
                where(path, data), f"expected an object, got {_json_type(step)}", f"trajectory[{k}]"
            )
    return trajectory


def _query_of(trajectory: list[dict], k: int, path: Path) -> list | None:
    """The messages sent for call k (1.x writes them as ``query``, some as ``messages``)."""
    step = trajectory[k]
    for key in ("query", "messages"):
        if step.get(key) is not None:
            return _messages(step[key], path, step, f"trajectory[{k}].{key}")
    return None


def _input_tokens(
    data: dict,
    trajectory: list[dict],
    k: int,
    path: Path,
    chunks: list[int] | None,
    first_input: int | None,
) -> int:
    """What is new in call k's prompt: from its query, else its chunk of the history, else
    (the first call) the history before the first turn, else the previous observation."""
    query = _query_of(trajectory, k, path)
    if query is not None:
        name = f"trajectory[{k}].query"
        _, query_start = _split_prefix(query, path, name)
        return _query_input(query, query_start, path, name)
    if chunks is not None:
        return chunks[k]
    if k == 0 and first_input is not None:
        return first_input
    if k > 0:
        obs = trajectory[k - 1].get("observation")
        if not isinstance(obs, str):
            raise fail(
                where(path, trajectory[k - 1]),
                "needed to size the next call's input (no query or matching history): "
                + ("missing" if obs is None else f"expected a string, got {_json_type(obs)}"),
                f"trajectory[{k - 1}].observation",
            )
        return estimate_tokens(obs)
    raise fail(
        where(path, data),
        "cannot size the first call's input: no query in the step and no history",
        "history",
    )


def _output_of(step: dict, at: str, name: str) -> tuple[int, str]:
    """(output tokens, action) of a step: the raw model response (its thought when there is
    none), plus the action's text when the response does not contain it."""
    response = step.get("response")
    if response is None or response == "":
        response = step.get("thought")
    if response is None:
        raise fail(at, "step has no response (nor thought)", f"{name}.response")
    if not isinstance(response, str):
        raise fail(at, f"expected a string, got {_json_type(response)}", f"{name}.response")
    action = step.get("action") or ""
    if not isinstance(action, str):
        raise fail(at, f"expected a string, got {_json_type(action)}", f"{name}.action")
    text = response if action.strip() in response else response + action
    return estimate_tokens(text), action
