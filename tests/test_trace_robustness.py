"""The trace loader on hostile input (issue 14, "Nothing lost, nothing stuck"): every bad file is
one clear TraceError naming the file and line (and the field), never a traceback, a hang or a
silently different experiment; line numbers are those of `wc -l`."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thundersim.cli import app
from thundersim.core.cluster import chain_key
from thundersim.traces.loader import load_trace, parse_json_line, read_text
from thundersim.traces.schema import (
    MAX_DISK_BYTES,
    MAX_PORTS,
    MAX_SECONDS,
    MAX_TOKENS,
    LongInt,
    TraceError,
)

from .test_trace import good_line  # the one valid line both files edit

runner = CliRunner()


def edited(path: str, value) -> dict:
    """good_line() with the dotted `path` (list indices allowed) set to `value`."""
    d = copy.deepcopy(good_line("bad"))
    *parents, last = path.split(".")
    obj = d
    for key in parents:
        obj = obj[int(key)] if key.isdigit() else obj[key]
    obj[int(last) if last.isdigit() else last] = value
    return d


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(TraceError) as e:
        load_trace(path)
    return str(e.value)


# --- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "[" * 50_000 + "]" * 50_000,
        '{"version": 1, "id": "x", "workload": "w", "arrival_s": 0, "steps": '
        + "[" * 50_000
        + "]" * 50_000
        + "}",
    ],
    ids=["bare", "inside a field"],
)
def test_deeply_nested_line_is_a_trace_error_naming_file_and_line(tmp_path, line):
    """50,000 nested arrays overflow the JSON parser's recursion: a TraceError at PATH:LINE, not a
    RecursionError traceback."""
    path = write(tmp_path / "t.jsonl", [json.dumps(good_line()), line])
    message = load_error(path)
    assert message.startswith(f"{path}:2: ")
    assert "nested too deeply" in message


# --- integers too long to convert ------------------------------------------------------------

LONG = "9" * 5000  # beyond Python's int-string conversion limit (4,300 digits)


@pytest.mark.parametrize(
    ("key", "field_name"),
    [
        ('"disk_bytes": 2000000000', "env.disk_bytes"),
        ('"input_tokens": 812', "steps[0].input_tokens"),
        ('"tool_s": 1.8', "steps[0].tool_s"),
        ('"arrival_s": 0.0', "arrival_s"),
        ('"version": 1', "version"),
    ],
)
def test_5000_digit_integer_is_refused_naming_file_line_and_field(tmp_path, key, field_name):
    """A 5,000-digit integer is refused at load with the field named, not a ValueError from
    int-string conversion."""
    name = key.split(":")[0]
    line = json.dumps(good_line("bad")).replace(key, f"{name}: {LONG}", 1)
    assert LONG in line
    path = write(tmp_path / "t.jsonl", [json.dumps(good_line()), line])
    message = load_error(path)
    assert message.startswith(f"{path}:2: ")
    assert message.endswith(f"(field {field_name})")
    assert "5,000 digits" in message


def test_long_integer_where_a_string_belongs_says_what_it_is(tmp_path):
    line = json.dumps(good_line()).replace('"swe-0001"', LONG)
    path = write(tmp_path / "t.jsonl", [line])
    message = load_error(path)
    assert message == (f"{path}:1: expected a string, got an integer of 5,000 digits (field id)")


@pytest.mark.parametrize("digits", [5000, 4000])
def test_trace_stats_on_a_huge_integer_is_a_clean_error(tmp_path, digits):
    """`thundersim trace stats` exits with "error: PATH:LINE: ..." (code 2), no traceback, both
    for an integer Python cannot convert and for one it can but that overflows a float."""
    line = json.dumps(good_line()).replace("2000000000", "9" * digits)
    path = write(tmp_path / "t.jsonl", [line])
    result = runner.invoke(app, ["trace", "stats", str(path)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"error: {path}:1: " in result.output
    assert "(field env.disk_bytes)" in result.output


# --- control characters in ids ---------------------------------------------------------------


def test_nul_in_a_program_id_cannot_alias_another_programs_kv_chain(tmp_path):
    """The simulator keys a program's KV chain after a reset as id + NUL + epoch; a program whose
    id is "a\\u00001" would share the chain of program "a" after its first reset (49 % hits
    where 0 % is right). Such an id is refused at load."""
    assert chain_key("a", 1) == chain_key("a\x001", 0)  # why: the collision itself
    reset = good_line("a")
    reset["steps"][1]["reset"] = True
    path = write(tmp_path / "t.jsonl", [json.dumps(reset), json.dumps(good_line("a\x001"))])
    assert '"a\\u00001"' in path.read_text()
    message = load_error(path)
    assert message == (
        f"{path}:2: must not contain a control character, found U+0000 at character 2 (field id)"
    )


@pytest.mark.parametrize("char", ["\x00", "\n", "\x1b", "\x7f", "\x85", "\x9f"])
@pytest.mark.parametrize(
    ("field_path", "field_name"),
    [
        ("id", "id"),
        ("workload", "workload"),
        ("prefix.id", "prefix.id"),
        ("steps.0.tool", "steps[0].tool"),
    ],
)
def test_control_character_in_an_id_is_refused(tmp_path, char, field_path, field_name):
    """C0 / C1 control characters and DEL in any id or name fail with the code point named."""
    d = edited(field_path, "x" + char + "y")
    path = write(tmp_path / "t.jsonl", [json.dumps(good_line()), json.dumps(d)])
    message = load_error(path)
    assert message.startswith(f"{path}:2: must not contain a control character")
    assert f"U+{ord(char):04X} at character 2" in message
    assert message.endswith(f"(field {field_name})")


def test_lone_surrogate_in_an_id_is_refused(tmp_path):
    """A lone surrogate ("\\ud800" in JSON) cannot be written as UTF-8 to any output."""
    path = write(tmp_path / "t.jsonl", [json.dumps(good_line("p\ud800"))])
    message = load_error(path)
    assert message == (
        f"{path}:1: must not contain a lone surrogate, found U+D800 at character 2 (field id)"
    )


def test_other_unicode_in_ids_is_fine(tmp_path):
    """Letters of any script, emoji and U+2028 (a separator, not a control) stay valid ids."""
    ids = ["évaluation-1", "程序-2", "agent-🙂", "a\u2028b", "tab-less\u00a0space"]
    path = write(tmp_path / "t.jsonl", [json.dumps(good_line(pid)) for pid in ids])
    assert [p.id for p in load_trace(path)] == ids


# --- line splitting --------------------------------------------------------------------------


@pytest.mark.parametrize("sep", ["\u2028", "\u2029"])
def test_line_separator_inside_a_raw_string_does_not_split_the_line(tmp_path, sep):
    """JSON allows U+2028 / U+2029 raw in a string: the loader must not split the line there, as
    str.splitlines does, and line numbers stay those of `wc -l`."""
    first = json.dumps(good_line(f"a{sep}b"), ensure_ascii=False)
    assert sep in first
    path = write(tmp_path / "t.jsonl", [first, json.dumps(good_line("c"))])
    assert [p.id for p in load_trace(path)] == [f"a{sep}b", "c"]
    write(path, [first, json.dumps(good_line("c")), "{}"])
    assert path.read_bytes().count(b"\n") == 3  # wc -l
    assert load_error(path).startswith(f"{path}:3: ")


@pytest.mark.parametrize("sep", ["\x0b", "\x0c", "\x1c", "\x1e"])
def test_other_splitlines_separators_do_not_split_either(tmp_path, sep):
    """Vertical tab, form feed and the file/record separators end a line for str.splitlines but
    not for `wc -l`: the line with one stays one line (here a JSON error on line 1, the raw
    control character), and the next line is line 2."""
    first = json.dumps(good_line()).replace('"swe"', f'"s{sep}we"')
    path = write(tmp_path / "t.jsonl", [first, "{}"])
    message = load_error(path)
    assert message.startswith(f"{path}:1: not valid JSON (Invalid control character")
    write(path, [json.dumps(good_line()), f"{sep}{{}}"])
    assert load_error(path).startswith(f"{path}:2: ")


def test_raw_nel_in_a_string_is_reported_as_a_control_character_on_its_line(tmp_path):
    """A raw U+0085 (NEL) used to split the line and read as broken JSON; now it is one line and
    refused as the control character it is, on the right line."""
    d = edited("steps.1.tool", "ba\x85sh")
    line = json.dumps(d, ensure_ascii=False)
    assert "\x85" in line
    path = write(tmp_path / "t.jsonl", [json.dumps(good_line()), line, "{}"])
    message = load_error(path)
    assert message == (
        f"{path}:2: must not contain a control character, found U+0085 at character 3 "
        "(field steps[1].tool)"
    )


def test_crlf_line_endings_load_and_keep_line_numbers(tmp_path):
    """Windows line endings: the "\\r" is dropped and lines count as `wc -l` counts them."""
    path = tmp_path / "t.jsonl"
    lines = [json.dumps(good_line("a")), "", "# note", json.dumps(good_line("b"))]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    assert [p.id for p in load_trace(path)] == ["a", "b"]
    path.write_bytes(("\r\n".join([*lines, "{}"]) + "\r\n").encode())
    assert load_error(path).startswith(f"{path}:5: ")


# --- bytes that are not UTF-8 ----------------------------------------------------------------


def test_non_utf8_byte_is_reported_by_line_and_column(tmp_path):
    """A byte that is not UTF-8 is reported as PATH:LINE with its byte in that line."""
    path = tmp_path / "t.jsonl"
    good = json.dumps(good_line()).encode()
    path.write_bytes(good + b"\n# comment\n" + b'{"id": "\xff"}\n')
    message = load_error(path)
    offset = len(good) + len(b"\n# comment\n") + len(b'{"id": "')
    assert message == (
        f"{path}:3: not UTF-8 text (invalid start byte at byte 9 of the line, "
        f"byte {offset} of the file)"
    )


def test_read_text_reports_the_line_of_a_bad_byte_for_converters_too(tmp_path):
    """read_text is shared with the converters: the same PATH:LINE form."""
    path = tmp_path / "log.json"
    path.write_bytes(b'{\n  "a": 1,\n  "b": "\xc3("\n}\n')
    with pytest.raises(
        TraceError, match=rf"^{re.escape(str(path))}:3: not UTF-8 text \(.* at byte 9 "
    ):
        read_text(path)


# --- bounds ----------------------------------------------------------------------------------

ABSURD = [
    # (dotted path, value, field named, words of the message)
    ("arrival_s", 1e300, "arrival_s", "at most 31,536,000 seconds (one year), got 1e+300"),
    ("steps.0.tool_s", 1e308, "steps[0].tool_s", "at most 31,536,000 seconds"),
    ("env.prep_s", 1e300, "env.prep_s", "at most 31,536,000 seconds"),
    ("arrival_s", MAX_SECONDS + 1, "arrival_s", "at most 31,536,000 seconds"),
    ("env.disk_bytes", 10**25, "env.disk_bytes", "at most 1,000,000,000,000,000, got 10,000,"),
    ("env.disk_bytes", 10**30, "env.disk_bytes", "out of range: an integer of 31 digits"),
    ("env.disk_bytes", MAX_DISK_BYTES + 1, "env.disk_bytes", "at most 1,000,000,000,000,000"),
    ("env.disk_bytes", 1e30, "env.disk_bytes", "expected an integer, got a number"),
    ("env.ports", 10**9, "env.ports", "at most 65,535"),
    ("prefix.tokens", 10**12, "prefix.tokens", "at most 100,000,000"),
    ("steps.0.input_tokens", MAX_TOKENS + 1, "steps[0].input_tokens", "at most 100,000,000"),
    ("steps.1.output_tokens", 10**18, "steps[1].output_tokens", "at most 100,000,000"),
    ("steps.1.output_tokens", 10**40, "steps[1].output_tokens", "out of range: an integer of 41"),
]


@pytest.mark.parametrize(
    ("field_path", "value", "field_name", "words"),
    ABSURD,
    ids=[f"{case[0]}={type(case[1]).__name__}:{case[1]:g}" for case in ABSURD],
)
def test_absurd_but_finite_value_is_refused(tmp_path, field_path, value, field_name, words):
    """Finite values no real run reaches (a tool call of 1e308 s, an arrival at 1e300 s, 10^30
    bytes of disk) would make `run` go on for ever or overflow while writing: refused at load,
    naming file, line and field."""
    path = write(
        tmp_path / "t.jsonl", [json.dumps(good_line()), json.dumps(edited(field_path, value))]
    )
    message = load_error(path)
    assert message.startswith(f"{path}:2: ")
    assert message.endswith(f"(field {field_name})")
    assert words in message


def test_values_at_the_bounds_load(tmp_path):
    """The bounds themselves are valid: nothing a real trace holds is refused."""
    d = good_line()
    d["arrival_s"] = MAX_SECONDS
    d["prefix"]["tokens"] = MAX_TOKENS
    d["env"] = {"prep_s": MAX_SECONDS, "disk_bytes": MAX_DISK_BYTES, "ports": MAX_PORTS}
    d["steps"][0].update(input_tokens=MAX_TOKENS, output_tokens=MAX_TOKENS, tool_s=MAX_SECONDS)
    path = write(tmp_path / "t.jsonl", [json.dumps(d)])
    (p,) = load_trace(path)
    assert p.arrival_s == MAX_SECONDS and p.env.disk_bytes == MAX_DISK_BYTES
    assert p.steps[0].input_tokens == MAX_TOKENS and p.steps[0].tool_s == MAX_SECONDS


def test_a_bad_line_after_good_ones_still_loads_nothing(tmp_path):
    """All or nothing, whichever of these failures comes last."""
    good = [json.dumps(good_line(f"p{i}")) for i in range(3)]
    for bad in [
        "[" * 50_000,
        json.dumps(edited("arrival_s", 1e300)),
        json.dumps(good_line("\x00")),
    ]:
        path = write(tmp_path / "t.jsonl", [*good, bad])
        result = None
        with pytest.raises(TraceError, match=r":4: "):
            result = load_trace(path)
        assert result is None


def test_parse_json_line_is_the_loaders_parser_for_other_jsonl_readers():
    """parse_json_line (for the converters' JSONL logs too): each failure a TraceError at the
    given PATH:LINE; duplicate keys may be allowed (the last wins) for third-party logs."""
    assert parse_json_line('{"a": 1, "a": 2}', "log:3", allow_duplicate_keys=True) == {"a": 2}
    with pytest.raises(TraceError, match=r"^log:3: key appears twice"):
        parse_json_line('{"a": 1, "a": 2}', "log:3")
    with pytest.raises(TraceError, match=r"^log:3: .*nested too deeply"):
        parse_json_line("[" * 50_000, "log:3")
    assert isinstance(parse_json_line(f'{{"n": {LONG}}}', "log:3")["n"], LongInt)
