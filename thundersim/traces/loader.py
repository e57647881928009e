"""Reading and writing trace files (JSONL, one program per line; the schema is
thundersim.traces.schema), and scaling a trace's timings."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from thundersim.traces.schema import (
    EnvSpec,
    LongInt,
    ProgramSpec,
    StepSpec,
    TraceError,
    _fail,
    program_from_dict,
    program_to_dict,
)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    # json.loads keeps the last of two equal keys without a word; in a trace that hides typos.
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def read_text(path: str | Path) -> str:
    """A trace or agent log as text; a file that cannot be read is a TraceError naming it (and,
    for bytes that are not UTF-8, the line and the byte of that line)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Lines as `wc -l` counts them: only b"\n" ends one.
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise TraceError(
            f"{path}:{line}: not UTF-8 text ({e.reason} at byte {column} of the line, "
            f"byte {e.start} of the file)"
        ) from None


def text_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text, lines ending at "\n" only (a trailing "\r" dropped), so
    numbers are those of `wc -l` and editors. str.splitlines would also split at U+2028,
    U+0085, form feeds and more, which JSON allows raw inside strings."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        yield lineno, line.removesuffix("\r")


def parse_json_line(line: str, where: str, *, allow_duplicate_keys: bool = False) -> Any:
    """One JSON value of a JSONL file, every failure a TraceError at `where` ("path:line"): bad
    JSON, a key given twice (unless allowed: the last wins, as in json.loads), nesting too deep
    for the parser. An integer too long to convert (Python refuses beyond 4,300 digits) comes
    back as a LongInt, for the field check to refuse by the field's name."""
    hook = None if allow_duplicate_keys else _no_duplicate_keys
    try:
        return json.loads(line, object_pairs_hook=hook, parse_int=LongInt.parse)
    except _DuplicateKey as e:
        raise _fail(where, "key appears twice in one object", str(e)) from None
    except json.JSONDecodeError as e:
        raise _fail(where, f"not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise _fail(
            where,
            "not a trace line: arrays or objects nested too deeply to parse "
            "(a program line nests 3 deep)",
        ) from None


def load_trace(path: str | Path) -> list[ProgramSpec]:
    """Read and validate a whole trace, all or nothing.

    Raises TraceError on the first bad line; blank lines and ``#`` comments are skipped.
    """
    text = read_text(path)

    programs: list[ProgramSpec] = []
    first_line: dict[str, int] = {}  # program id -> line that defined it
    for lineno, line in text_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        obj = parse_json_line(stripped, where)
        program = program_from_dict(obj, where)
        if program.id in first_line:
            raise _fail(
                where,
                f"duplicate program id {program.id!r}, first defined at line "
                f"{first_line[program.id]}, again at line {lineno}",
                "id",
            )
        first_line[program.id] = lineno
        programs.append(program)
    if not programs:
        raise TraceError(f"{path}: trace has no programs")
    return programs


def dump_trace(programs: Iterable[ProgramSpec], fp: IO[str]) -> None:
    """Write one compact JSON object per line, keys in the documented order."""
    for p in programs:
        fp.write(json.dumps(program_to_dict(p), separators=(",", ":"), allow_nan=False))
        fp.write("\n")


def scale_trace(
    programs: Iterable[ProgramSpec], token_scale: float = 1.0, time_scale: float = 1.0
) -> list[ProgramSpec]:
    """Shrink every token count by token_scale and every tool / preparation / arrival time by
    time_scale, so a real trace fits a small engine and a short experiment. Counts stay >= 1."""
    if token_scale <= 0 or time_scale <= 0:
        raise ValueError("scales must be > 0")

    def scaled(tokens: int) -> int:
        return max(1, round(tokens * token_scale))

    out = []
    for p in programs:
        steps = tuple(
            StepSpec(
                scaled(s.input_tokens),
                scaled(s.output_tokens),
                s.tool,
                s.tool_s * time_scale,
                s.reset,
            )
            for s in p.steps
        )
        out.append(
            ProgramSpec(
                id=p.id,
                workload=p.workload,
                arrival_s=p.arrival_s * time_scale,
                prefix_id=p.prefix_id,
                prefix_tokens=round(p.prefix_tokens * token_scale) if p.prefix_id else 0,
                env=EnvSpec(p.env.prep_s * time_scale, p.env.disk_bytes, p.env.ports),
                steps=steps,
            )
        )
    return out
