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
from thundersim.traces.schema import EnvSpec, ProgramSpec, _json_type

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
    submitted = str(info.get("exit_status") or "").lower() == "submitted"

    # leading system message(s) = the shared prefix
    prefix_texts, k = [], 0
    while k < len(messages) and messages[k]["role"] == "system":
        prefix_texts.append(message_text(messages[k], where(path, messages[k]), f"messages[{k}]"))
        k += 1

    # calls: (index of the assistant message, indices of the messages sent before it)
    calls: list[tuple[int, list[int]]] = []
    pending: list[int] = []
    for j in range(k, len(messages)):
        role = messages[j]["role"]
        if role == "assistant":
            calls.append((j, pending))
            pending = []
        elif role not in _NOT_SENT:
            pending.append(j)
    trailing = pending  # observations of the last call
    if not calls:
        raise fail(top, "no assistant message: the trajectory has no LLM call", "messages")

    usages = []
    for j, _ in calls:
        usages.append(_usage(messages[j], where(path, messages[j]), f"messages[{j}]"))
    use_usage = all(u is not None for u in usages)

    prefix_tokens = sum(estimate_tokens(t) for t in prefix_texts)
    outputs: list[int] = []
    inputs: list[tuple[int, bool]] = []
    if use_usage:
        prompts = [u[0] for u in usages]
        outputs = [u[1] for u in usages]
        prefix_tokens = max(0, min(prefix_tokens, min(prompts) - 1))
        inputs = reconstruct_inputs(prompts, outputs, prefix_tokens)

    steps = []
    for i, (j, sent) in enumerate(calls):
        msg = messages[j]
        at = where(path, msg)
        name = f"messages[{j}]"
        text = message_text(msg, at, name)
        if not use_usage:
            reasoning = msg.get("reasoning_content")
            out = estimate_tokens(text + (reasoning if isinstance(reasoning, str) else ""))
            new = sum(
                estimate_tokens(
                    message_text(messages[s], where(path, messages[s]), f"messages[{s}]")
                )
                for s in sent
            )
            outputs.append(out)
            inputs.append((new, False))

        last = i == len(calls) - 1
        observations = calls[i + 1][1] if not last else trailing
        obs_msgs = [messages[s] for s in observations if messages[s]["role"] in ("user", "tool")]
        obs_names = [
            f"messages[{s}]" for s in observations if messages[s]["role"] in ("user", "tool")
        ]

        fn = tool_call_name(msg)
        commands = _BASH_BLOCK.findall(text)
        if fn:
            tool = fn
        elif len(commands) == 1:
            tool = "bash"
        else:
            tool = ""  # format error: mini-SWE-agent ran nothing and asked again
        if tool and (any(m in text for m in _SUBMIT_MARKERS) or (last and submitted)):
            tool = "submit"
        tool_s = _tool_seconds(msg, obs_msgs, path, name, obs_names) if tool else 0.0
        new, reset = inputs[i]
        steps.append(make_step(new, outputs[i], tool, tool_s, reset))

    return ProgramSpec(
        id=_program_id(path),
        workload=workload,
        arrival_s=0.0,
        prefix_id=prefix_id_for("\x00".join(prefix_texts)) if prefix_tokens > 0 else None,
        prefix_tokens=prefix_tokens,
        env=EnvSpec(),
        steps=tuple(steps),
    )
