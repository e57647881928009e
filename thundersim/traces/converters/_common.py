"""Helpers shared by the converters: reading JSON / JSONL with line numbers, token estimates,
prefix ids, and the field checks that turn bad input into ``TraceError``s.

Every error reads ``PATH:LINE: what is wrong (field NAME)``, as in ``thundersim.traces.schema``. For a
JSONL file the line is the record's; for a single JSON document (a ``.traj`` file) it is the line
where the offending object (the trajectory step, the message) opens, or 1 for the top level.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from json import decoder as _jdecoder
from json import scanner as _jscanner
from pathlib import Path
from typing import Any

from thundersim.traces.loader import parse_json_line, read_text, text_lines
from thundersim.traces.schema import StepSpec, TraceError, _fail, _int, _json_type, _seconds, _str

__all__ = [
    "CHARS_PER_TOKEN",
    "Obj",
    "TraceError",
    "content_text",
    "estimate_tokens",
    "fail",
    "load_json",
    "message_text",
    "prefix_id_for",
    "read_jsonl",
    "reconstruct_inputs",
    "where",
]

# OpenAI's published rule of thumb: one token is about 4 characters of English text
# (https://help.openai.com/en/articles/4936856). Code and JSON tokenise a little denser, prose in
# other languages much denser; without a tokenizer (nothing may be downloaded at run time) this is
# the estimate used wherever a log carries no `usage`.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Tokens in `text` by the 4-characters-per-token rule: ceil(len(text) / 4), 0 for "".

    Counts only the text: chat-template framing (role markers, a few tokens a message) is not
    added, so estimates run slightly low for many short messages.
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prefix_id_for(text: str) -> str:
    """A stable id for a shared prefix: programs whose prefix text is equal share its KV."""
    return "sys-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


fail = _fail


class Obj(dict):
    """A parsed JSON object that remembers the line its ``{`` is on (1-based)."""

    __slots__ = ("line",)


def where(path: Path | str, obj: Any = None, line: int | None = None) -> str:
    """``PATH:LINE`` for an error about `obj` (its own line when it has one, else `line`, else 1)."""
    if line is None:
        line = getattr(obj, "line", 1)
    return f"{path}:{line}"


def load_json(path: Path) -> Any:
    """Parse one JSON document; every object in it is an `Obj` knowing its line.

    Uses the json module's pure-Python scanner with a hook on objects, so it is a few times slower
    than ``json.loads``: fine for agent trajectories (megabytes), not meant for gigabytes.
    """
    text = read_text(path)
    newlines = [m.start() for m in re.finditer("\n", text)]

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
        start = s_and_end[1] - 1  # the scanner passes the index just after "{"
        pairs, end = _jdecoder.JSONObject(s_and_end, strict, scan_once, None, list, memo)
        obj = Obj(pairs)
        obj.line = bisect.bisect_left(newlines, start) + 1
        return obj, end

    dec = json.JSONDecoder()
    dec.parse_object = parse_object
    dec.scan_once = _jscanner.py_make_scanner(dec)
    try:
        start = len(text) - len(text.lstrip())
        value, end = dec.raw_decode(text, start)
        if text[end:].strip():
            raise json.JSONDecodeError(
                "more data after the first JSON document (a JSONL file?)", text, end
            )
    except json.JSONDecodeError as e:
        raise fail(f"{path}:{e.lineno}", f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise TraceError(f"{path}: JSON nested too deeply") from None
    return value


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not an object fails."""
    # lines end at "\n" only, nesting too deep and over-long integers are clean errors at
    # their line (the trace loader's reader; a third-party log's repeated key: the last wins)
    for lineno, line in text_lines(read_text(path)):
        if not line.strip():
            continue
        at = f"{path}:{lineno}"
        obj = parse_json_line(line, at, allow_duplicate_keys=True)
        if not isinstance(obj, dict):
            raise fail(at, f"expected a JSON object, got {_json_type(obj)}")
        yield lineno, obj


# --- messages ---------------------------------------------------------------------------------


def content_text(content: Any, at: str, name: str) -> str:
    """The text of a chat message's ``content``: a string, or a list of parts (OpenAI's
    ``[{"type": "text", "text": ...}]``; non-text parts such as images count by their JSON)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                parts.append(json.dumps(part, separators=(",", ":")))
        return "".join(parts)
    raise fail(at, f"expected a string or a list of parts, got {_json_type(content)}", name)


def message_text(msg: Any, at: str, name: str) -> str:
    """Everything of a chat message the model reads or writes: its content plus, for tool calls,
    each call's function name and arguments. A message with neither fails."""
    if not isinstance(msg, dict):
        raise fail(at, f"expected a message object, got {_json_type(msg)}", name)
    parts = []
    content = msg.get("content")
    if content is not None:
        parts.append(content_text(content, at, f"{name}.content"))
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise fail(at, f"expected an array, got {_json_type(calls)}", f"{name}.tool_calls")
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            parts.append(str(fn.get("name") or ""))
            args = fn.get("arguments") or ""
            parts.append(args if isinstance(args, str) else json.dumps(args))
    if content is None and not calls:
        raise fail(at, "message has no content", f"{name}.content")
    return "".join(parts)


def tool_call_name(msg: dict) -> str:
    """The function name of a message's first tool call, or ""."""
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                return fn["name"]
    return ""


# --- field checks (thin wrappers over the trace loader's, which name the field) ---------------


def need(obj: dict, key: str, at: str, name: str) -> Any:
    if not isinstance(obj, dict):
        raise fail(at, f"expected an object, got {_json_type(obj)}", name.rsplit(".", 1)[0])
    if key not in obj or obj[key] is None:
        raise fail(at, "missing required field", name)
    return obj[key]


def need_int(obj: dict, key: str, at: str, name: str, minimum: int = 0) -> int:
    return _int(need(obj, key, at, name), at, name, minimum)


def need_str(obj: dict, key: str, at: str, name: str, allow_empty: bool = False) -> str:
    return _str(need(obj, key, at, name), at, name, allow_empty)


def seconds(value: Any, at: str, name: str) -> float:
    return _seconds(value, at, name)


def number(value: Any, at: str, name: str) -> float:
    """A finite number (timestamps may be any finite value)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(at, f"expected a number, got {_json_type(value)}", name)
    if not math.isfinite(value):
        raise fail(at, f"must be finite, got {value}", name)
    return float(value)


# --- token arithmetic -------------------------------------------------------------------------


def reconstruct_inputs(
    prompts: list[int], outputs: list[int], prefix_tokens: int
) -> list[tuple[int, bool]]:
    """(new input tokens, reset) per call from the prompt and output lengths of each call.

    Call i's new input is ``prompt[i] - (prompt[i-1] + output[i-1])``: what came on top of the
    previous call's context. Below 1 the context did not grow by a turn, so it was cut
    (condensation, truncation, restart): the call is a reset and its input is ``prompt[i] -
    prefix``. The first call's input is ``prompt[0] - prefix``. Inputs are at least 1 (a call
    always sends a turn); the loader needs that, and it only matters for logs whose prompt is
    no longer than the prefix estimate.
    """
    out = []
    for i, prompt in enumerate(prompts):
        reset = False
        if i == 0:
            new = prompt - prefix_tokens
        else:
            new = prompt - (prompts[i - 1] + outputs[i - 1])
            if new < 1:
                reset = True
                new = prompt - prefix_tokens
        out.append((max(1, new), reset))
    return out


def make_step(input_tokens: int, output_tokens: int, tool: str, tool_s: float, reset: bool = False):
    """A StepSpec that always loads: inputs and outputs at least 1, no tool time without a tool."""
    return StepSpec(
        input_tokens=max(1, input_tokens),
        output_tokens=max(1, output_tokens),
        tool=tool,
        tool_s=tool_s if tool else 0.0,
        reset=reset,
    )


def one_program_per_file(paths: list[Path], convert_file: Callable[[Path], Any]) -> list:
    """Convert each file into one program, refusing two files that yield the same program id."""
    programs = []
    seen: dict[str, Path] = {}
    for path in paths:
        program = convert_file(Path(path))
        if program.id in seen:
            raise fail(
                f"{path}:1",
                f"duplicate program id {program.id!r} (also from {seen[program.id]})",
                "id",
            )
        seen[program.id] = Path(path)
        programs.append(program)
    return programs
