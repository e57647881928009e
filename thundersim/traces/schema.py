"""Trace schema v1: one agent program per JSON line, and its validation.

A trace is what the Driver replays: for every program, the LLM calls it makes and the tool
it runs after each one. Context grows cumulatively: the i-th call's prompt is the shared
prefix plus every earlier input and output plus the i-th call's new input tokens.

JSON line format (keys in this order; ``#`` comments and blank lines are skipped)::

    {"version": 1, "id": "swe-0001", "workload": "swe", "arrival_s": 0.0,
     "prefix": {"id": "swe-system", "tokens": 3000},          # shared system prompt; {"id": null, "tokens": 0} or omitted = none
     "env": {"prep_s": 30.0, "disk_bytes": 2000000000, "ports": 1},   # optional, defaults 0
     "steps": [{"input_tokens": 812, "output_tokens": 150, "tool": "bash", "tool_s": 1.8}, ...]}

Every step field is required but ``reset``. ``tool`` is the tool run after that step's LLM call;
the final answer may have ``"tool": ""`` with ``"tool_s": 0``. ``"reset": true`` (optional)
marks a call before which the agent reset its context (condensation, restart): its prompt is
the shared prefix plus its own input only, and nothing of the old context is reused.

Loading is all-or-nothing: ``load_trace`` (thundersim.traces.loader) validates every line and
raises ``TraceError`` with ``PATH:LINE: what is wrong (field NAME)`` on the first bad one, so a
typo never turns into a silently different experiment and nothing is ever half-loaded.
Numbers are bounded far above any real run (MAX_SECONDS, MAX_TOKENS, MAX_DISK_BYTES, MAX_PORTS
below), and ids and names (program id, workload, prefix id, tool) hold no control characters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_DISK_BYTES",
    "MAX_PORTS",
    "MAX_SECONDS",
    "MAX_TOKENS",
    "TRACE_VERSION",
    "EnvSpec",
    "LongInt",
    "ProgramSpec",
    "StepSpec",
    "TraceError",
    "program_from_dict",
    "program_to_dict",
]

TRACE_VERSION = 1

# Bounds on a line's numbers: far above anything a real agent run records, yet low enough that
# the simulator's clock and counters stay exact and every output finite. A value beyond one is a
# corrupt or synthetic line, refused at load rather than simulated for ever (an arrival at 1e300 s
# never comes) or overflowing while results are written.
# provenance: estimate — one year: no tool call, sandbox preparation or trace span of an
# agent run lasts longer
MAX_SECONDS = 365 * 24 * 3600
# provenance: estimate — 100 M tokens in one call or prefix: 100x the longest context windows
# served today (1 M tokens)
MAX_TOKENS = 10**8
# provenance: estimate — 1 PB: a thousand times the largest sandbox image (1 TB)
MAX_DISK_BYTES = 10**15
# provenance: spec — TCP and UDP port numbers are 16 bits (RFC 793): no host has more ports
MAX_PORTS = 65_535

# Seconds are written with millisecond resolution: finer is noise next to tool and prep times,
# and a fixed resolution makes dumped traces byte-stable across platforms.
_SECONDS_DECIMALS = 3


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One LLM call of a program and the tool it runs afterwards."""

    input_tokens: int  # new tokens appended to the context before this call (≥ 1)
    output_tokens: int  # tokens the call generates (≥ 1)
    tool: str  # tool run after the call; "" = none (final answer)
    tool_s: float  # the tool's duration in seconds (0 when tool is "")
    # The agent reset its context before this call (condensation, restart): the prompt is the
    # shared prefix plus this call's input only, and none of the old context can be reused.
    reset: bool = False


@dataclass(frozen=True, slots=True)
class EnvSpec:
    """The tool environment (sandbox) a program holds while it runs."""

    prep_s: float = 0.0  # seconds to prepare it before the first call
    disk_bytes: int = 0  # disk it occupies until released
    ports: int = 0  # network ports it holds


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """One agent program as recorded in a trace; immutable, so one trace can feed many runs."""

    id: str
    workload: str
    arrival_s: float
    prefix_id: str | None  # shared system prompt's id (programs with equal ids share its KV)
    prefix_tokens: int
    env: EnvSpec
    steps: tuple[StepSpec, ...]
    # prompt length of every call, precomputed so prompt_tokens() is O(1) in the hot loop
    _prompts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _epochs: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Accept any sequence from generators but store a tuple, so the spec stays hashable.
        steps = tuple(self.steps)
        object.__setattr__(self, "steps", steps)
        prompts, epochs = [], []
        context, epoch = self.prefix_tokens, 0
        for step in steps:
            if step.reset:
                context, epoch = self.prefix_tokens, epoch + 1
            context += step.input_tokens
            prompts.append(context)
            epochs.append(epoch)
            context += step.output_tokens
        object.__setattr__(self, "_prompts", tuple(prompts))
        object.__setattr__(self, "_epochs", tuple(epochs))

    def epoch(self, i: int) -> int:
        """How many context resets happened up to and including call i."""
        return self._epochs[i]

    @property
    def peak_context(self) -> int:
        """The largest context any call reaches (prompt + output): the KV a replica must fit."""
        return max(p + s.output_tokens for p, s in zip(self._prompts, self.steps, strict=True))

    def prompt_tokens(self, i: int) -> int:
        """Context length at the i-th LLM call (0-based).

        = prefix_tokens + input_tokens[0..i] + output_tokens[0..i-1], in O(1).
        """
        if not 0 <= i < len(self._prompts):
            raise IndexError(f"program {self.id!r} has {len(self._prompts)} steps, no step {i}")
        return self._prompts[i]

    @property
    def final_context(self) -> int:
        """Context length after the last call's output: the program's peak KV footprint."""
        return self._prompts[-1] + self.steps[-1].output_tokens


class TraceError(ValueError):
    """A trace that cannot be loaded; the message is ``PATH:LINE: what is wrong (field NAME)``."""


class LongInt:
    """A JSON integer too long to convert (the loader's ``parse_int`` returns one instead of
    the int): Python refuses int-string conversion beyond 4,300 digits, and any integer this
    long is beyond every bound anyway, so the field check reports it with the field's name."""

    __slots__ = ("digits",)

    # provenance: definition — more digits than any bound has (10**15 has 16), far fewer than
    # Python's int-string conversion limit (4,300)
    MAX_DIGITS = 30

    def __init__(self, digits: int) -> None:
        self.digits = digits

    @classmethod
    def parse(cls, text: str) -> int | LongInt:
        """``json.loads(..., parse_int=LongInt.parse)``: the int, or a LongInt when too long."""
        digits = len(text.lstrip("-"))
        return cls(digits) if digits > cls.MAX_DIGITS else int(text)


# --- validation -------------------------------------------------------------------------------

_TOP_KEYS = ("version", "id", "workload", "arrival_s", "prefix", "env", "steps")
_REQUIRED_TOP = ("version", "id", "workload", "arrival_s", "steps")
_PREFIX_KEYS = ("id", "tokens")
_ENV_KEYS = ("prep_s", "disk_bytes", "ports")
_STEP_KEYS = ("input_tokens", "output_tokens", "tool", "tool_s", "reset")
_REQUIRED_STEP = ("input_tokens", "output_tokens", "tool", "tool_s")


def _fail(where: str, what: str, name: str | None = None) -> TraceError:
    return TraceError(f"{where}: {what}" + (f" (field {name})" if name else ""))


def _check_keys(
    obj: Any,
    allowed: tuple[str, ...],
    required: tuple[str, ...],
    where: str,
    name: str | None,
) -> dict:
    """`obj` must be an object with only `allowed` keys and every `required` one."""
    if not isinstance(obj, dict):
        if name is None:
            raise _fail(where, f"expected a JSON object, got {_json_type(obj)}")
        raise _fail(where, f"expected an object, got {_json_type(obj)}", name)
    for key in obj:
        if key not in allowed:
            full = f"{name}.{key}" if name else key
            raise _fail(
                where,
                f"unknown key {key!r}, expected one of {', '.join(allowed)}",
                full,
            )
    for key in required:
        if key not in obj:
            raise _fail(where, "missing required field", f"{name}.{key}" if name else key)
    return obj


def _json_type(value: Any) -> str:
    if isinstance(value, LongInt):
        return f"an integer of {value.digits:,} digits"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _int(value: Any, where: str, name: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, LongInt):
        bound = f", at most {maximum:,}" if maximum is not None else ""
        raise _fail(where, f"out of range: an integer of {value.digits:,} digits{bound}", name)
    # bool is a subclass of int in Python; `true` in a token count is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {_json_type(value)}", name)
    if value < minimum:
        if minimum == 0:
            raise _fail(where, f"must not be negative, got {value}", name)
        raise _fail(where, f"must be at least {minimum}, got {value}", name)
    if maximum is not None and value > maximum:
        raise _fail(where, f"must be at most {maximum:,}, got {value:,}", name)
    return value


def _seconds(value: Any, where: str, name: str) -> float:
    """A duration or arrival time: a finite number of seconds, 0 to MAX_SECONDS (one year)."""
    if isinstance(value, LongInt):
        raise _fail(
            where,
            f"out of range: an integer of {value.digits:,} digits, "
            f"at most {MAX_SECONDS:,} seconds (one year)",
            name,
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"expected a number of seconds, got {_json_type(value)}", name)
    value = float(value)
    if not math.isfinite(value):
        raise _fail(where, f"must be finite, got {value}", name)
    if value < 0:
        raise _fail(where, f"must not be negative, got {value}", name)
    if value > MAX_SECONDS:
        raise _fail(
            where, f"must be at most {MAX_SECONDS:,} seconds (one year), got {value:g}", name
        )
    return value


# C0 and C1 control characters (NUL, newline, escape, DEL, NEL, ...) and lone surrogates.
# In an id they break what the id is for: the simulator joins a program id and a reset count
# with NUL into a KV chain key ("a" after one reset is "a\x001", which a program with id
# "a\u00001" would share), a newline splits the line-oriented outputs an id is written to, and a
# lone surrogate cannot be written as UTF-8 at all.
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _str(value: Any, where: str, name: str, allow_empty: bool = False) -> str:
    """An id or a name (program id, workload, prefix id, tool): a string without control
    characters or lone surrogates."""
    if not isinstance(value, str):
        raise _fail(where, f"expected a string, got {_json_type(value)}", name)
    if not value and not allow_empty:
        raise _fail(where, "must not be empty", name)
    bad = _BAD_CHARS.search(value)
    if bad:
        char = bad.group()
        kind = "lone surrogate" if "\ud800" <= char <= "\udfff" else "control character"
        raise _fail(
            where,
            f"must not contain a {kind}, found U+{ord(char):04X} at character {bad.start() + 1}",
            name,
        )
    return value


def program_from_dict(obj: Any, where: str) -> ProgramSpec:
    """Validate one parsed trace line and build its ProgramSpec.

    `where` ("path:line") prefixes every error message.
    """
    if not isinstance(obj, dict):
        raise _fail(where, f"expected a JSON object, got {_json_type(obj)}")
    _check_version(obj, where)
    _check_keys(obj, _TOP_KEYS, _REQUIRED_TOP, where, None)
    # Checked in the order of the documented keys, so the first bad one is the one reported.
    program_id = _str(obj["id"], where, "id")
    workload = _str(obj["workload"], where, "workload")
    arrival_s = _seconds(obj["arrival_s"], where, "arrival_s")
    prefix_id, prefix_tokens = _prefix_of(obj, where)
    return ProgramSpec(
        id=program_id,
        workload=workload,
        arrival_s=arrival_s,
        prefix_id=prefix_id,
        prefix_tokens=prefix_tokens,
        env=_env_of(obj, where),
        steps=_steps_of(obj["steps"], where),
    )


def _check_version(obj: dict, where: str) -> None:
    # The version comes first: a line from a newer schema should say so, not list odd keys.
    if "version" not in obj:
        raise _fail(where, "missing required field", "version")
    version = obj["version"]
    if isinstance(version, LongInt):
        raise _fail(where, f"unsupported trace version ({_json_type(version)})", "version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(where, f"expected an integer, got {_json_type(version)}", "version")
    if version != TRACE_VERSION:
        raise _fail(
            where,
            f"unsupported trace version {version}, this thundersim reads version {TRACE_VERSION}",
            "version",
        )


def _prefix_of(obj: dict, where: str) -> tuple[str | None, int]:
    """(id, tokens) of the line's shared prefix; (None, 0) without one."""
    if "prefix" not in obj:
        return None, 0
    prefix = _check_keys(obj["prefix"], _PREFIX_KEYS, _PREFIX_KEYS, where, "prefix")
    prefix_id = None if prefix["id"] is None else _str(prefix["id"], where, "prefix.id")
    prefix_tokens = _int(prefix["tokens"], where, "prefix.tokens", maximum=MAX_TOKENS)
    if prefix_tokens > 0 and prefix_id is None:
        # Without an id nothing can share the prefix's KV, so it is a mistake, not a prefix.
        raise _fail(where, f"{prefix_tokens} prefix tokens but no prefix id", "prefix.id")
    return prefix_id, prefix_tokens


def _env_of(obj: dict, where: str) -> EnvSpec:
    if "env" not in obj:
        return EnvSpec()
    raw_env = _check_keys(obj["env"], _ENV_KEYS, (), where, "env")
    return EnvSpec(
        prep_s=_seconds(raw_env.get("prep_s", 0.0), where, "env.prep_s"),
        disk_bytes=_int(
            raw_env.get("disk_bytes", 0), where, "env.disk_bytes", maximum=MAX_DISK_BYTES
        ),
        ports=_int(raw_env.get("ports", 0), where, "env.ports", maximum=MAX_PORTS),
    )


def _steps_of(raw_steps: Any, where: str) -> tuple[StepSpec, ...]:
    if not isinstance(raw_steps, list):
        raise _fail(where, f"expected an array, got {_json_type(raw_steps)}", "steps")
    if not raw_steps:
        raise _fail(where, "a program needs at least one step", "steps")
    return tuple(_step_of(raw, where, f"steps[{index}]") for index, raw in enumerate(raw_steps))


_STEP_KEY_SET = frozenset(_STEP_KEYS)
_REQUIRED_STEP_SET = frozenset(_REQUIRED_STEP)


def _step_of(raw: Any, where: str, name: str) -> StepSpec:
    # A valid step, checked in one pass (a trace has thousands; building every field's name
    # for an error that does not happen was half of `make run`'s start-up). Anything this does
    # not accept goes the long way below, which names the first bad field.
    if type(raw) is dict and _REQUIRED_STEP_SET <= raw.keys() <= _STEP_KEY_SET:
        i, o, tool, tool_s = raw["input_tokens"], raw["output_tokens"], raw["tool"], raw["tool_s"]
        reset = raw.get("reset", False)
        if (
            type(i) is int
            and 1 <= i <= MAX_TOKENS
            and type(o) is int
            and 1 <= o <= MAX_TOKENS
            and type(tool) is str
            and (type(tool_s) is float or type(tool_s) is int)
            and 0 <= tool_s <= MAX_SECONDS  # NaN fails both: the long way reports it
            and (tool or not tool_s)
            and type(reset) is bool
            and not _BAD_CHARS.search(tool)
        ):
            return StepSpec(i, o, tool, float(tool_s), reset)
    return _step_checked(raw, where, name)


def _step_checked(raw: Any, where: str, name: str) -> StepSpec:
    _check_keys(raw, _STEP_KEYS, _REQUIRED_STEP, where, name)
    # Every call sends at least one new token (the user turn or a tool observation), and
    # an engine always generates at least one token.
    input_tokens = _int(
        raw["input_tokens"], where, f"{name}.input_tokens", minimum=1, maximum=MAX_TOKENS
    )
    output_tokens = _int(
        raw["output_tokens"], where, f"{name}.output_tokens", minimum=1, maximum=MAX_TOKENS
    )
    tool = _str(raw["tool"], where, f"{name}.tool", allow_empty=True)
    tool_s = _seconds(raw["tool_s"], where, f"{name}.tool_s")
    if not tool and tool_s > 0:
        raise _fail(where, f"tool_s is {tool_s} but no tool is named", f"{name}.tool")
    reset = raw.get("reset", False)
    if not isinstance(reset, bool):
        raise _fail(where, f"expected true or false, got {_json_type(reset)}", f"{name}.reset")
    return StepSpec(input_tokens, output_tokens, tool, tool_s, reset)


def program_to_dict(program: ProgramSpec) -> dict:
    """The JSON line of a program, every key present, in the documented order."""
    return {
        "version": TRACE_VERSION,
        "id": program.id,
        "workload": program.workload,
        "arrival_s": round(program.arrival_s, _SECONDS_DECIMALS),
        "prefix": {"id": program.prefix_id, "tokens": program.prefix_tokens},
        "env": {
            "prep_s": round(program.env.prep_s, _SECONDS_DECIMALS),
            "disk_bytes": program.env.disk_bytes,
            "ports": program.env.ports,
        },
        "steps": [_step_to_dict(step) for step in program.steps],
    }


def _step_to_dict(step: StepSpec) -> dict:
    line = {
        "input_tokens": step.input_tokens,
        "output_tokens": step.output_tokens,
        "tool": step.tool,
        "tool_s": round(step.tool_s, _SECONDS_DECIMALS),
    }
    if step.reset:  # optional: traces without resets stay as they were
        line["reset"] = True
    return line
