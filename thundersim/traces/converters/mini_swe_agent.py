"""mini-SWE-agent trajectories (``*.traj.json``) → trace v1. One file is one program.

The format (``trajectory_format`` "mini-swe-agent-1"; 2.x writes "mini-swe-agent-1.1")::

    {"info": {"exit_status": "Submitted", "submission": "...",
              "model_stats": {"instance_cost": 0.05, "api_calls": 12}, "config": {...}},
     "messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "<task>"},
                  {"role": "assistant", "content": "THOUGHT: ...\\n```bash\\nls\\n```",
                   "extra": {"response": {... "usage": {"prompt_tokens": ..., "completion_tokens": ...}}}},
                  {"role": "user", "content": "<returncode>0</returncode>\\n<output>...</output>"},
                  ...],
     "trajectory_format": "mini-swe-agent-1"}

How it maps:

- steps: one per assistant message (each is one LLM call); the user (or, with 2.x tool calling,
  ``tool``) messages after it are the observations that form the next call's new input.
- tokens: when every assistant message carries ``extra.response.usage`` (litellm's response, as
  mini-SWE-agent saves it), input = ``prompt_tokens(i) - prompt_tokens(i-1) -
  completion_tokens(i-1)`` and output = ``completion_tokens``, with the same reset rule as the
  openai-chat converter; otherwise both are estimated from the message text (4 characters per
  token). ``info.model_stats`` only counts calls and cost, so it is not used.
- shared prefix: the leading system message, id hashed from its text, tokens estimated.
- tool: "bash" for a call whose message holds exactly one bash block (or a tool call; its
  function's name then), "submit" for the call that submits (its command prints
  ``COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`` / ``MINI_SWE_AGENT_FINAL_OUTPUT``, or it is the last
  call of a ``Submitted`` run), "" for a call whose format was rejected (no command ran).
- tool_s: mini-SWE-agent records no timing, so 0, unless the observation carries one:
  ``execution_time`` or ``duration`` (seconds) on the message or in its ``extra``, or a
  ``timestamp`` (unix seconds) on both the assistant message and its observation (their gap).
- arrival 0 and an empty environment for every program.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from thundersim.traces.converters._common import (
    estimate_tokens,
    fail,
    load_json,
    make_step,
    message_text,
    need_int,
    number,
    one_program_per_file,
    prefix_id_for,
    reconstruct_inputs,
    seconds,
    tool_call_name,
    where,
)
from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec, _json_type

__all__ = ["convert"]

_BASH_BLOCK = re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL)
_SUBMIT_MARKERS = ("COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT", "MINI_SWE_AGENT_FINAL_OUTPUT")
_NOT_SENT = ("exit",)  # 2.x may log the exit as a message; the model never sees it


def convert(paths: list[Path], workload: str = "swe") -> list[ProgramSpec]:
    """One program per file; the id is the file name without ``.traj.json`` / ``.json``."""
    return one_program_per_file(paths, lambda path: _convert_file(path, workload))


def _program_id(path: Path) -> str:
    for suffix in (".traj.json", ".json", ".traj"):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _extra(msg: dict) -> dict:
    extra = msg.get("extra")
    return extra if isinstance(extra, dict) else {}


def _field(msg: dict, key: str) -> Any:
    """A field of a message, read from the message itself or from its ``extra``."""
    if msg.get(key) is not None:
        return msg[key]
    return _extra(msg).get(key)


def _usage(msg: dict, at: str, name: str) -> tuple[int, int] | None:
    response = _extra(msg).get("response")
    if not isinstance(response, dict) or response.get("usage") is None:
        return None
    usage = response["usage"]
    uname = f"{name}.extra.response.usage"
    if not isinstance(usage, dict):
        raise fail(at, f"expected an object, got {_json_type(usage)}", uname)
    prompt = need_int(usage, "prompt_tokens", at, f"{uname}.prompt_tokens", minimum=1)
    completion = need_int(usage, "completion_tokens", at, f"{uname}.completion_tokens")
    return prompt, completion


def _tool_seconds(
    call: dict, observations: list[dict], path: Path, name: str, obs_names: list[str]
) -> float:
    for obs, oname in zip(observations, obs_names, strict=True):
        for key in ("execution_time", "duration"):
            value = _field(obs, key)
            if value is not None:
                return seconds(value, where(path, obs), f"{oname}.{key}")
    t0 = _field(call, "timestamp")
    if t0 is not None and observations:
        t1 = _field(observations[0], "timestamp")
        if t1 is not None:
            start = number(t0, where(path, call), f"{name}.timestamp")
            end = number(t1, where(path, observations[0]), f"{obs_names[0]}.timestamp")
            return max(0.0, end - start)
    return 0.0


def _convert_file(path: Path, workload: str) -> ProgramSpec:
    data = load_json(path)
    messages, submitted = _messages_of(data, path)
    prefix_texts, first_call = _prefix_texts(messages, path)
    calls, trailing = _calls(messages, first_call, where(path, data))
    usages = [_usage(messages[j], where(path, messages[j]), f"messages[{j}]") for j, _ in calls]

    prefix_tokens = sum(estimate_tokens(text) for text in prefix_texts)
    counts: list[tuple[int, int, bool]] | None = None  # (input, output, reset) per call
    if all(usage is not None for usage in usages):
        prompts = [usage[0] for usage in usages]
        outputs = [usage[1] for usage in usages]
        prefix_tokens = max(0, min(prefix_tokens, min(prompts) - 1))
        inputs = reconstruct_inputs(prompts, outputs, prefix_tokens)
        counts = [
            (new, output, reset) for (new, reset), output in zip(inputs, outputs, strict=True)
        ]

    steps = []
    for i, (j, sent) in enumerate(calls):
        last = i == len(calls) - 1
        observations = calls[i + 1][1] if not last else trailing
        call_counts = counts[i] if counts is not None else None
        steps.append(_step(messages, path, j, sent, observations, last and submitted, call_counts))

    return ProgramSpec(
        id=_program_id(path),
        workload=workload,
        arrival_s=0.0,
        prefix_id=prefix_id_for("\x00".join(prefix_texts)) if prefix_tokens > 0 else None,
        prefix_tokens=prefix_tokens,
        env=EnvSpec(),
        steps=tuple(steps),
    )


def _messages_of(data: Any, path: Path) -> tuple[list[dict], bool]:
    """The trajectory's messages, each checked to be an object with a role, and whether the
    run ended ``Submitted``."""
    if not isinstance(data, dict):
        raise fail(f"{path}:1", f"expected a JSON object, got {_json_type(data)}")
    top = where(path, data)
    fmt = data.get("trajectory_format")
    if fmt is not None and not (isinstance(fmt, str) and fmt.startswith("mini-swe-agent")):
        raise fail(top, f"not a mini-SWE-agent trajectory ({fmt!r})", "trajectory_format")
    if "messages" not in data:
        raise fail(top, "missing required field", "messages")
    messages = data["messages"]
    if not isinstance(messages, list):
        raise fail(top, f"expected an array, got {_json_type(messages)}", "messages")
    for k, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise fail(top, f"expected a message object, got {_json_type(msg)}", f"messages[{k}]")
        if not isinstance(msg.get("role"), str):
            raise fail(where(path, msg), "missing required field", f"messages[{k}].role")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    return messages, str(info.get("exit_status") or "").lower() == "submitted"


def _prefix_texts(messages: list[dict], path: Path) -> tuple[list[str], int]:
    """Texts of the leading system message(s), the shared prefix, and the index after them."""
    texts, k = [], 0
    while k < len(messages) and messages[k]["role"] == "system":
        texts.append(message_text(messages[k], where(path, messages[k]), f"messages[{k}]"))
        k += 1
    return texts, k


def _calls(
    messages: list[dict], start: int, top: str
) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """(index of the assistant message, indices of the messages sent before it) per call, and
    the indices of the last call's observations."""
    calls: list[tuple[int, list[int]]] = []
    pending: list[int] = []
    for j in range(start, len(messages)):
        role = messages[j]["role"]
        if role == "assistant":
            calls.append((j, pending))
            pending = []
        elif role not in _NOT_SENT:
            pending.append(j)
    if not calls:
        raise fail(top, "no assistant message: the trajectory has no LLM call", "messages")
    return calls, pending


def _step(
    messages: list[dict],
    path: Path,
    call: int,
    sent: list[int],
    observations: list[int],
    submits_at_end: bool,
    counts: tuple[int, int, bool] | None,
) -> StepSpec:
    """The step of the assistant message `call`: its tokens from `counts` (usage), else
    estimated from the text of the call and of the messages `sent` before it; its tool and the
    tool's time from the call and its `observations`."""
    msg = messages[call]
    name = f"messages[{call}]"
    text = message_text(msg, where(path, msg), name)
    if counts is None:
        reasoning = msg.get("reasoning_content")
        output = estimate_tokens(text + (reasoning if isinstance(reasoning, str) else ""))
        new = sum(
            estimate_tokens(message_text(messages[s], where(path, messages[s]), f"messages[{s}]"))
            for s in sent
        )
        counts = (new, output, False)
    shown = [s for s in observations if messages[s]["role"] in ("user", "tool")]
    tool = _tool_of(msg, text, submits_at_end)
    tool_s = 0.0
    if tool:
        obs_msgs = [messages[s] for s in shown]
        tool_s = _tool_seconds(msg, obs_msgs, path, name, [f"messages[{s}]" for s in shown])
    new, output, reset = counts
    return make_step(new, output, tool, tool_s, reset)


def _tool_of(msg: dict, text: str, submits_at_end: bool) -> str:
    """The tool a call ran: its tool call's function, "bash" for exactly one bash block, ""
    for a format error (mini-SWE-agent ran nothing and asked again); "submit" for one that
    submits (a marker in its command, or the last call of a ``Submitted`` run)."""
    function = tool_call_name(msg)
    if function:
        tool = function
    elif len(_BASH_BLOCK.findall(text)) == 1:
        tool = "bash"
    else:
        tool = ""
    if tool and (any(marker in text for marker in _SUBMIT_MARKERS) or submits_at_end):
        tool = "submit"
    return tool
