"""Trace schema v1: round trips, context arithmetic, and every way a line can be wrong."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thundersim.traces.loader import dump_trace, load_trace
from thundersim.traces.schema import (
    TRACE_VERSION,
    EnvSpec,
    ProgramSpec,
    StepSpec,
    TraceError,
    program_from_dict,
    program_to_dict,
)
from thundersim.traces.workloads import GENERATORS, generate

BUNDLED_SWE = Path(__file__).resolve().parent.parent / "traces" / "swe.jsonl"


def make_program(pid: str = "p-0", **overrides) -> ProgramSpec:
    fields = {
        "id": pid,
        "workload": "test",
        "arrival_s": 1.5,
        "prefix_id": "sys",
        "prefix_tokens": 100,
        "env": EnvSpec(prep_s=2.0, disk_bytes=10, ports=1),
        "steps": (
            StepSpec(10, 5, "bash", 1.25),
            StepSpec(20, 7, "editor", 0.1),
            StepSpec(30, 9, "", 0.0),
        ),
    }
    fields.update(overrides)
    return ProgramSpec(**fields)


def good_line(pid: str = "swe-0001") -> dict:
    return {
        "version": 1,
        "id": pid,
        "workload": "swe",
        "arrival_s": 0.0,
        "prefix": {"id": "swe-system", "tokens": 3000},
        "env": {"prep_s": 30.0, "disk_bytes": 2_000_000_000, "ports": 1},
        "steps": [
            {"input_tokens": 812, "output_tokens": 150, "tool": "bash", "tool_s": 1.8},
            {"input_tokens": 90, "output_tokens": 40, "tool": "submit", "tool_s": 0.2},
        ],
    }


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- the program model ----------------------------------------------------------------------


def test_prompt_tokens_is_prefix_plus_inputs_through_i_plus_outputs_before_i():
    """prompt_tokens(i) = prefix + input[0..i] + output[0..i-1]; final_context adds the last
    output."""
    p = make_program()
    assert p.prompt_tokens(0) == 100 + 10
    assert p.prompt_tokens(1) == 100 + 10 + 5 + 20
    assert p.prompt_tokens(2) == 100 + 10 + 5 + 20 + 7 + 30
    assert p.final_context == p.prompt_tokens(2) + 9


def test_prompt_tokens_out_of_range_raises_index_error():
    """Step indices are 0..len(steps)-1; negative indices do not wrap around."""
    p = make_program()
    with pytest.raises(IndexError):
        p.prompt_tokens(3)
    with pytest.raises(IndexError):
        p.prompt_tokens(-1)


def test_program_spec_is_frozen_hashable_and_stores_steps_as_tuple():
    """Specs are immutable values: equal specs hash equal, and a list of steps becomes a tuple."""
    p = make_program(steps=[StepSpec(1, 1, "", 0.0)])
    assert isinstance(p.steps, tuple)
    assert hash(p) == hash(make_program(steps=(StepSpec(1, 1, "", 0.0),)))
    with pytest.raises(AttributeError):
        p.id = "other"  # type: ignore[misc]


# --- round trips ----------------------------------------------------------------------------


def test_dump_then_load_gives_equal_programs(tmp_path):
    """dump_trace → load_trace returns programs equal to those dumped."""
    programs = [
        make_program("a"),
        make_program("b", prefix_id=None, prefix_tokens=0, env=EnvSpec()),
    ]
    path = tmp_path / "t.jsonl"
    with path.open("w", encoding="utf-8") as fp:
        dump_trace(programs, fp)
    assert load_trace(path) == programs


def test_dump_writes_one_compact_object_per_line_in_documented_key_order():
    """Each line is compact JSON with keys version, id, workload, arrival_s, prefix, env, steps."""
    buf = io.StringIO()
    dump_trace([make_program("a"), make_program("b")], buf)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert ": " not in lines[0] and ", " not in lines[0]
    assert list(json.loads(lines[0])) == [
        "version",
        "id",
        "workload",
        "arrival_s",
        "prefix",
        "env",
        "steps",
    ]
    assert list(json.loads(lines[0])["steps"][0]) == [
        "input_tokens",
        "output_tokens",
        "tool",
        "tool_s",
    ]


def test_dump_rounds_seconds_to_milliseconds():
    """Seconds are written with 3 decimals."""
    d = program_to_dict(make_program(arrival_s=1.23456, env=EnvSpec(prep_s=0.0004)))
    assert d["arrival_s"] == 1.235
    assert d["env"]["prep_s"] == 0.0


def test_prefix_and_env_may_be_omitted():
    """A line without prefix or env means no shared prefix and an environment of zeros."""
    d = good_line()
    del d["prefix"], d["env"]
    p = program_from_dict(d, "t:1")
    assert (p.prefix_id, p.prefix_tokens, p.env) == (None, 0, EnvSpec())


def test_env_fields_default_to_zero():
    """Each env field is optional on its own."""
    d = good_line()
    d["env"] = {"ports": 2}
    assert program_from_dict(d, "t:1").env == EnvSpec(prep_s=0.0, disk_bytes=0, ports=2)


def test_integer_seconds_are_accepted_as_floats():
    """JSON has one number type: `"arrival_s": 3` is 3.0 seconds."""
    d = good_line()
    d["arrival_s"] = 3
    p = program_from_dict(d, "t:1")
    assert p.arrival_s == 3.0 and isinstance(p.arrival_s, float)


_seconds = st.integers(min_value=0, max_value=10**7).map(lambda ms: ms / 1000)
_tokens = st.integers(min_value=1, max_value=10**6)
# Ids and names: any text but control characters (refused, see test_trace_robustness.py).
_name = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=12)


@st.composite
def program_dicts(draw) -> dict:
    has_prefix = draw(st.booleans())
    steps = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        tool = draw(st.sampled_from(["", "bash", "editor", "search"]) | _name)
        steps.append(
            {
                "input_tokens": draw(_tokens),
                "output_tokens": draw(_tokens),
                "tool": tool,
                "tool_s": draw(_seconds) if tool else 0.0,
            }
        )
    return {
        "version": TRACE_VERSION,
        "id": draw(_name),
        "workload": draw(_name),
        "arrival_s": draw(_seconds),
        "prefix": {
            "id": draw(_name) if has_prefix else None,
            "tokens": draw(st.integers(0, 10**5)) if has_prefix else 0,
        },
        "env": {
            "prep_s": draw(_seconds),
            "disk_bytes": draw(st.integers(0, 10**13)),
            "ports": draw(st.integers(0, 64)),
        },
        "steps": steps,
    }


@settings(max_examples=200, deadline=None)
@given(program_dicts())
def test_any_valid_program_dict_round_trips(d):
    """program_to_dict(program_from_dict(d)) == d, and it survives a trip through a file."""
    p = program_from_dict(d, "t:1")
    assert program_to_dict(p) == d
    buf = io.StringIO()
    dump_trace([p], buf)
    assert program_from_dict(json.loads(buf.getvalue()), "t:1") == p


# --- bad input ------------------------------------------------------------------------------


def _set(path: str, value):
    """An edit of good_line(): set the dotted `path` (list indices allowed) to `value`."""

    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        obj = d
        for key in parents:
            obj = obj[int(key)] if key.isdigit() else obj[key]
        obj[int(last) if last.isdigit() else last] = value

    return edit


def _delete(path: str):
    def edit(d: dict) -> None:
        *parents, last = path.split(".")
        obj = d
        for key in parents:
            obj = obj[int(key)] if key.isdigit() else obj[key]
        del obj[last]

    return edit


BAD_FIELDS = [
    # (case id, edit of a good line, field the message must name, words it must contain)
    ("missing version", _delete("version"), "version", "missing"),
    (
        "version 2",
        _set("version", 2),
        "version",
        "unsupported trace version 2, this thundersim reads version 1",
    ),
    ("version string", _set("version", "1"), "version", "integer"),
    ("missing id", _delete("id"), "id", "missing"),
    ("missing workload", _delete("workload"), "workload", "missing"),
    ("missing arrival", _delete("arrival_s"), "arrival_s", "missing"),
    ("missing steps", _delete("steps"), "steps", "missing"),
    ("empty id", _set("id", ""), "id", "empty"),
    ("id not string", _set("id", 7), "id", "string"),
    ("empty workload", _set("workload", ""), "workload", "empty"),
    ("unknown key", _set("arival_s", 1.0), "arival_s", "unknown key"),
    ("arrival string", _set("arrival_s", "0"), "arrival_s", "number"),
    ("arrival bool", _set("arrival_s", True), "arrival_s", "boolean"),
    ("arrival negative", _set("arrival_s", -1.0), "arrival_s", "negative"),
    ("arrival infinite", _set("arrival_s", float("inf")), "arrival_s", "finite"),
    ("arrival nan", _set("arrival_s", float("nan")), "arrival_s", "finite"),
    ("prefix not object", _set("prefix", 3000), "prefix", "object"),
    ("prefix missing tokens", _delete("prefix.tokens"), "prefix.tokens", "missing"),
    ("prefix unknown key", _set("prefix.len", 1), "prefix.len", "unknown key"),
    ("prefix tokens without id", _set("prefix.id", None), "prefix.id", "no prefix id"),
    ("prefix tokens negative", _set("prefix.tokens", -5), "prefix.tokens", "negative"),
    ("prefix tokens float", _set("prefix.tokens", 3000.0), "prefix.tokens", "integer"),
    ("prefix empty id", _set("prefix.id", ""), "prefix.id", "empty"),
    ("env unknown key", _set("env.gpus", 1), "env.gpus", "unknown key"),
    ("env prep negative", _set("env.prep_s", -0.5), "env.prep_s", "negative"),
    ("env disk bool", _set("env.disk_bytes", False), "env.disk_bytes", "boolean"),
    ("env ports negative", _set("env.ports", -1), "env.ports", "negative"),
    ("steps not list", _set("steps", {}), "steps", "array"),
    ("steps empty", _set("steps", []), "steps", "at least one step"),
    ("step not object", _set("steps.0", 5), "steps[0]", "object"),
    ("step unknown key", _set("steps.1.tools", "x"), "steps[1].tools", "unknown key"),
    ("step missing tool", _delete("steps.1.tool"), "steps[1].tool", "missing"),
    ("input tokens zero", _set("steps.0.input_tokens", 0), "steps[0].input_tokens", "at least 1"),
    (
        "output tokens zero",
        _set("steps.1.output_tokens", 0),
        "steps[1].output_tokens",
        "at least 1",
    ),
    ("input tokens bool", _set("steps.0.input_tokens", True), "steps[0].input_tokens", "boolean"),
    ("input tokens float", _set("steps.0.input_tokens", 8.5), "steps[0].input_tokens", "integer"),
    ("tool_s negative", _set("steps.0.tool_s", -1.0), "steps[0].tool_s", "negative"),
    ("tool_s infinite", _set("steps.0.tool_s", float("inf")), "steps[0].tool_s", "finite"),
    ("tool not string", _set("steps.0.tool", None), "steps[0].tool", "string"),
    ("tool_s without tool", _set("steps.1.tool", ""), "steps[1].tool", "no tool"),
]


@pytest.mark.parametrize(
    ("edit", "field_name", "words"),
    [case[1:] for case in BAD_FIELDS],
    ids=[case[0] for case in BAD_FIELDS],
)
def test_bad_field_is_rejected_with_path_line_and_field_name(tmp_path, edit, field_name, words):
    """A bad field fails the load with "PATH:LINE: what is wrong (field NAME)"."""
    d = copy.deepcopy(good_line())
    edit(d)
    other = good_line() | {"id": "other"}
    # Python's json writes NaN/Infinity, which json.loads reads back: the loader must catch them.
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(other), json.dumps(d)])
    with pytest.raises(TraceError) as e:
        load_trace(path)
    message = str(e.value)
    assert message.startswith(f"{path}:2: ")
    assert message.endswith(f"(field {field_name})")
    assert words in message


def test_huge_exponent_is_rejected_as_non_finite(tmp_path):
    """1e999 parses to infinity; it is rejected like any non-finite number."""
    line = json.dumps(good_line()).replace('"arrival_s": 0.0', '"arrival_s": 1e999')
    path = write_lines(tmp_path / "t.jsonl", [line])
    with pytest.raises(TraceError, match=r":1: .*finite.*\(field arrival_s\)$"):
        load_trace(path)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"version": 1, "id": ', "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object, got an array"),
        ('"swe-0001"', "expected a JSON object, got a string"),
    ],
)
def test_line_that_is_not_a_json_object_is_rejected(tmp_path, line, words):
    """Lines that are not JSON, or not an object, fail with PATH:LINE and the reason."""
    path = write_lines(tmp_path / "t.jsonl", ["# header", "", line])
    with pytest.raises(TraceError) as e:
        load_trace(path)
    assert str(e.value).startswith(f"{path}:3: ")
    assert words in str(e.value)


def test_json_error_detail_is_included(tmp_path):
    """A JSON syntax error carries the parser's own reason and column."""
    path = write_lines(tmp_path / "t.jsonl", ['{"version": 1,}'])
    with pytest.raises(TraceError, match=r"t\.jsonl:1: not valid JSON \(.+ at column \d+\)"):
        load_trace(path)


def test_duplicate_key_in_one_object_is_rejected(tmp_path):
    """A key given twice in one object is a typo, not "the last one wins"."""
    line = json.dumps(good_line())[:-1] + ', "id": "again"}'
    path = write_lines(tmp_path / "t.jsonl", [line])
    with pytest.raises(TraceError, match=r":1: key appears twice .*\(field id\)$"):
        load_trace(path)


def test_duplicate_program_id_names_both_lines(tmp_path):
    """Two programs with one id fail, naming the line of each."""
    line = json.dumps(good_line())
    path = write_lines(tmp_path / "t.jsonl", [line, "# comment", line])
    with pytest.raises(TraceError) as e:
        load_trace(path)
    message = str(e.value)
    assert message.startswith(f"{path}:3: ")
    assert "line 1" in message and "line 3" in message and message.endswith("(field id)")


def test_bad_last_line_means_nothing_is_returned(tmp_path):
    """Loading is all-or-nothing: one bad line at the end and no program comes back."""
    good = [json.dumps(good_line() | {"id": f"p{i}"}) for i in range(5)]
    path = write_lines(tmp_path / "t.jsonl", [*good, '{"version": 1}'])
    result = None
    with pytest.raises(TraceError, match=r":6: "):
        result = load_trace(path)
    assert result is None


def test_blank_and_comment_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    """Comments and blank lines are skipped, yet errors still cite physical line numbers."""
    line = json.dumps(good_line())
    path = write_lines(tmp_path / "t.jsonl", ["# a trace", "", line, "   ", "  # indented"])
    assert len(load_trace(path)) == 1
    write_lines(path, ["# a trace", "", line, "", "{}"])
    with pytest.raises(TraceError, match=r":5: "):
        load_trace(path)


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n"])
def test_trace_without_programs_is_rejected(tmp_path, content):
    """An empty trace is an error: "PATH: trace has no programs"."""
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TraceError) as e:
        load_trace(path)
    assert str(e.value) == f"{path}: trace has no programs"


def test_missing_file_is_rejected(tmp_path):
    """A missing file is a TraceError: "PATH: no such file"."""
    path = tmp_path / "nope.jsonl"
    with pytest.raises(TraceError) as e:
        load_trace(path)
    assert str(e.value) == f"{path}: no such file"


def test_trace_error_is_a_value_error():
    """Callers that catch ValueError also catch bad traces."""
    assert issubclass(TraceError, ValueError)


# --- the bundled trace and the generator ----------------------------------------------------


def test_bundled_swe_trace_loads_with_300_programs():
    """traces/swe.jsonl is valid and holds 300 swe programs."""
    programs = load_trace(BUNDLED_SWE)
    assert len(programs) == 300
    assert {p.workload for p in programs} == {"swe"}


def test_bundled_swe_trace_is_what_the_generator_writes():
    """traces/swe.jsonl is exactly `python -m thundersim.traces.workloads.swe --programs 300 --seed 0`."""
    buf = io.StringIO()
    dump_trace(generate("swe", 300, 0), buf)
    assert BUNDLED_SWE.read_text(encoding="utf-8") == buf.getvalue()


@pytest.mark.parametrize("workload", sorted(GENERATORS))
def test_generator_is_deterministic_per_seed_and_differs_across_seeds(workload):
    """The same seed gives equal programs; another seed gives different ones."""
    assert generate(workload, 20, 7) == generate(workload, 20, 7)
    assert generate(workload, 20, 7) != generate(workload, 20, 8)


@pytest.mark.parametrize("workload", sorted(GENERATORS))
def test_generator_output_is_prefix_stable(workload):
    """A larger trace starts with the smaller one: programs do not depend on the count."""
    assert generate(workload, 30, 3)[:10] == generate(workload, 10, 3)


@pytest.mark.parametrize("workload", sorted(GENERATORS))
def test_generated_programs_pass_validation_and_round_trip(workload, tmp_path):
    """Everything a generator produces is a valid trace that loads back equal."""
    programs = generate(workload, 40, 11)
    path = tmp_path / "g.jsonl"
    with path.open("w", encoding="utf-8") as fp:
        dump_trace(programs, fp)
    assert load_trace(path) == programs


def test_unknown_workload_lists_valid_names():
    """generate() with an unknown name raises ValueError naming the valid workloads."""
    with pytest.raises(ValueError, match="swe"):
        generate("nope", 1, 0)


def test_context_reset_restarts_the_context_from_the_shared_prefix(tmp_path):
    """A step with reset: its prompt is prefix + its own input; later calls grow from there;
    the peak context is the largest call, not the last; the field round-trips and is optional."""
    from thundersim.traces.loader import dump_trace, load_trace
    from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec

    p = ProgramSpec(
        "r",
        "test",
        0.0,
        "sys",
        100,
        EnvSpec(),
        (
            StepSpec(50, 10, "bash", 1.0),
            StepSpec(20, 5, "bash", 1.0),
            StepSpec(30, 7, "bash", 1.0, reset=True),
            StepSpec(4, 3, "", 0.0),
        ),
    )
    assert [p.prompt_tokens(i) for i in range(4)] == [150, 180, 130, 141]
    assert [p.epoch(i) for i in range(4)] == [0, 0, 1, 1]
    assert p.peak_context == 185 and p.final_context == 144
    path = tmp_path / "t.jsonl"
    with path.open("w") as fp:
        dump_trace([p], fp)
    text = path.read_text()
    assert text.count('"reset":true') == 1  # written only where set
    assert load_trace(path) == [p]


def test_reset_must_be_a_boolean(tmp_path):
    import pytest

    from thundersim.traces.loader import load_trace
    from thundersim.traces.schema import TraceError

    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"version":1,"id":"a","workload":"w","arrival_s":0,"steps":'
        '[{"input_tokens":1,"output_tokens":1,"tool":"","tool_s":0,"reset":"yes"}]}\n'
    )
    with pytest.raises(TraceError, match=r":1: .*steps\[0\]\.reset"):
        load_trace(path)


def test_the_one_pass_step_check_agrees_with_the_field_by_field_one():
    """schema._step_of accepts the common valid step in one pass and sends anything else the
    long way: for valid and invalid steps alike, the result (or the error) is the same."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from thundersim.traces import schema

    value = st.one_of(
        st.integers(-5, 10**9), st.floats(allow_nan=True), st.booleans(), st.none(),
        st.text(max_size=3), st.just(""), st.just(0), st.just(1), st.just(2.5),
    )  # fmt: skip
    keys = st.sampled_from([*schema._STEP_KEYS, "other"])
    steps = st.one_of(st.dictionaries(keys, value, max_size=6), value)

    def outcome(f, raw):
        try:
            return ("ok", f(raw, "t:1", "steps[0]"))
        except ValueError as exc:
            return ("error", str(exc))

    @settings(max_examples=400, deadline=None)
    @given(steps)
    def agree(raw):
        assert outcome(schema._step_of, raw) == outcome(schema._step_checked, raw)

    agree()
    valid = {"input_tokens": 5, "output_tokens": 2, "tool": "bash", "tool_s": 1.5}
    assert schema._step_of(valid, "t:1", "s") == schema._step_checked(valid, "t:1", "s")
