"""Converters from real agent logs into trace v1: expected programs from hand-made fixtures,
round trips through dump/load, the live log written from the simulator's own tables, bad input,
and `thundersim trace convert`.

Expected token counts are worked out by hand from the fixtures: without `usage` a text of n
characters is ceil(n / 4) tokens.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_program, run_sim
from thundersim.cli import app
from thundersim.live.driver import write_live_log
from thundersim.traces.converters import (
    CHARS_PER_TOKEN,
    CONVERTERS,
    convert,
    estimate_tokens,
    mini_swe_agent,
    openai_chat,
    prefix_id_for,
    swe_agent,
    thundersim_live,
)
from thundersim.traces.loader import dump_trace, load_trace
from thundersim.traces.schema import EnvSpec, ProgramSpec, StepSpec, TraceError

FIX = Path(__file__).resolve().parent / "fixtures" / "convert"
SWE_TRAJS = [FIX / "django__django-11099.traj", FIX / "astropy__astropy-12907.traj"]
MINI_TRAJS = [FIX / "range-sum-1.traj.json", FIX / "with-usage.traj.json"]
CHAT = FIX / "chat.jsonl"
LIVE = FIX / "live.jsonl"

runner = CliRunner()


def S(i, o, tool="", tool_s=0.0, reset=False) -> StepSpec:
    return StepSpec(i, o, tool, tool_s, reset)


def prog(pid, workload, prefix, steps, arrival=0.0, env=EnvSpec()) -> ProgramSpec:
    return ProgramSpec(pid, workload, arrival, prefix[0], prefix[1], env, tuple(steps))


def roundtrip(programs: list[ProgramSpec], tmp_path: Path) -> list[ProgramSpec]:
    path = tmp_path / "out.jsonl"
    with path.open("w") as f:
        dump_trace(programs, f)
    return load_trace(path)


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in {path}")


# --- shared helpers -----------------------------------------------------------------------------


def test_registry_names_the_four_formats():
    assert set(CONVERTERS) == {"swe-agent", "mini-swe-agent", "openai-chat", "thundersim-live"}


def test_estimate_is_four_characters_per_token_rounded_up():
    assert CHARS_PER_TOKEN == 4
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 4000) == 1000


def test_prefix_id_is_stable_and_depends_only_on_the_text():
    assert prefix_id_for("You are an agent.") == prefix_id_for("You are an agent.")
    assert prefix_id_for("You are an agent.") != prefix_id_for("You are an agent!")
    assert prefix_id_for("x").startswith("sys-")


# --- SWE-agent ----------------------------------------------------------------------------------


def test_swe_agent_trajectories_become_one_program_per_file():
    """django (0.7 style): inputs from the history between assistant turns, no execution_time on
    step 2. astropy (1.x style): inputs from each step's query, the action of a function call
    counted as output. Both have the same system prompt and demonstration, so they share one
    prefix: 96 + 128 characters -> 24 + 32 = 56 tokens."""
    django, astropy = swe_agent.convert(SWE_TRAJS)
    assert django.prefix_id == astropy.prefix_id is not None
    shared = (django.prefix_id, 56)
    assert django == prog(
        "django__django-11099",
        "swe",
        shared,
        [
            # issue 129 chars; response 75 chars (its action is inside it)
            S(33, 19, "find_file", 0.25),
            # templated observations: 142, 132, 93 chars; responses 66, 97, 31 chars
            S(36, 17, "open", 0.5),
            S(33, 25, "edit", 0.0),  # no execution_time recorded: 0
            S(24, 8, "submit", 1.75),
        ],
    )
    assert astropy == prog(
        "astropy__astropy-12907",
        "swe",
        shared,
        [
            # instance 92 chars; response 42 + action 62 chars (a tool call, not in the text)
            S(23, 26, "str_replace_editor", 0.125),
            # tool message "OBSERVATION:\n..." 93 chars; response 32 chars
            S(24, 8, "submit", 3.0),
        ],
    )


def test_swe_agent_without_history_uses_the_previous_observation(tmp_path):
    doc = json.loads(SWE_TRAJS[0].read_text())
    # keep only system + issue in the history, so it no longer lines up with the 4 steps
    doc["history"] = doc["history"][:3]
    path = tmp_path / "x.traj"
    path.write_text(json.dumps(doc, indent=2))
    (p,) = swe_agent.convert([path])
    obs = [s["observation"] for s in doc["trajectory"]]
    assert [s.input_tokens for s in p.steps[1:]] == [math.ceil(len(o) / 4) for o in obs[:3]]
    # ... and fails naming the history when even the first call cannot be sized
    del doc["history"]
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(TraceError, match=rf"^{path}:1: .*\(field history\)$"):
        swe_agent.convert([path])


# --- mini-SWE-agent -----------------------------------------------------------------------------


def test_mini_swe_agent_messages_become_calls():
    """range-sum-1: no usage, so estimated. System 95 chars -> prefix 24. Inputs: task 106,
    observations 65, 78, 45 chars; outputs: 51, 86, 73, 107 chars. Call 1 has two bash blocks
    (a format error: no tool ran), call 2's observation carries extra.execution_time, call 3
    submits. with-usage: tokens from extra.response.usage; the third prompt (900) is shorter
    than the context before it (1500 + 90), so it is a reset."""
    est, usage = mini_swe_agent.convert(MINI_TRAJS)
    assert est.prefix_id == usage.prefix_id is not None  # same system prompt
    prefix = (est.prefix_id, 24)
    assert est == prog(
        "range-sum-1",
        "swe",
        prefix,
        [S(27, 13, "bash"), S(17, 22, ""), S(20, 19, "bash", 0.75), S(12, 27, "submit")],
    )
    assert usage == prog(
        "with-usage",
        "swe",
        prefix,
        [
            S(1200 - 24, 60, "bash"),
            S(1500 - (1200 + 60), 90, "bash"),
            S(900 - 24, 30, "submit", reset=True),
        ],
    )
    assert [usage.prompt_tokens(i) for i in range(3)] == [1200, 1500, 900]


def test_mini_swe_agent_tool_time_from_timestamps(tmp_path):
    doc = {
        "info": {"exit_status": "LimitsExceeded"},
        "messages": [
            {"role": "system", "content": "sys!"},
            {"role": "user", "content": "task"},
            {"role": "assistant", "content": "```bash\nls\n```", "extra": {"timestamp": 10.0}},
            {"role": "user", "content": "out", "extra": {"timestamp": 12.5}},
            {"role": "assistant", "content": "```bash\npwd\n```", "timestamp": 13.0},
            {"role": "user", "content": "limits exceeded"},
        ],
        "trajectory_format": "mini-swe-agent-1",
    }
    path = tmp_path / "t.traj.json"
    path.write_text(json.dumps(doc))
    (p,) = mini_swe_agent.convert([path], workload="mini")
    assert p.workload == "mini"
    assert [(s.tool, s.tool_s) for s in p.steps] == [("bash", 2.5), ("bash", 0.0)]


# --- OpenAI chat ----------------------------------------------------------------------------------


def test_openai_chat_groups_calls_by_program_and_reconstructs_inputs():
    """task-a: ids at the top level, in metadata and in extra_body; lines out of order, sorted by
    start; tool from the tool calls, its time the gap end(i) -> start(i+1); cached tokens on the
    second call change nothing. task-b: id in request.extra_body, no timestamps (line order),
    explicit tool / tool_s; its third prompt (700) is below the context before it (1200 + 300):
    a context cut."""
    a, b = openai_chat.convert([CHAT])
    assert a == prog(
        "task-a",
        "chat",
        (prefix_id_for("You are a helpful agent."), 6),  # 24 chars
        [
            S(1000 - 6, 100, "bash", 105.5 - 102.0),
            S(1300 - 1100, 50, "python", 108.0 - 107.0),
            S(1500 - 1350, 20, ""),
        ],
    )
    assert b == prog(
        "task-b",
        "chat",
        (prefix_id_for("You are a coding agent. Use tools well."), 10),  # 39 chars
        [
            S(800 - 10, 200, "bash", 2.0),
            S(1200 - 1000, 300, "bash", 0.5),
            S(700 - 10, 40, "", reset=True),
        ],
    )
    assert [a.prompt_tokens(i) for i in range(3)] == [1000, 1300, 1500]
    assert [b.prompt_tokens(i) for i in range(3)] == [800, 1200, 700]


def _chat_record(pid_key, pid, prompt, completion, **extra):
    return {
        pid_key: pid,
        "request": {"messages": [{"role": "system", "content": "abcd" * 5}]},
        "response": {
            "choices": [{"message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
        },
        **extra,
    }


def test_openai_chat_program_field_arrival_and_unnamed_gaps(tmp_path):
    recs = [
        _chat_record("session", "s1", 100, 10, start=50.0, end=51.0),
        _chat_record("session", "s2", 200, 20, start=60.0, end=61.0),
        _chat_record("session", "s1", 150, 10, start=53.0, end=54.0),
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s1, s2 = openai_chat.convert([path], workload="w", program_field="session")
    assert (s1.arrival_s, s2.arrival_s) == (0.0, 10.0)
    # no tool named but 2 s pass before the next call: an "unknown" tool
    assert s1.steps == (S(95, 10, "unknown", 2.0), S(40, 10, ""))
    assert s2.workload == "w"
    with pytest.raises(TraceError, match=rf"^{path}:1: .*\(field program_id\)$"):
        openai_chat.convert([path])


def test_openai_chat_without_usage_estimates_from_the_messages(tmp_path):
    rec = {
        "program_id": "e",
        "request": {
            "messages": [
                {"role": "system", "content": "s" * 40},  # 10 tokens
                {"role": "user", "content": [{"type": "text", "text": "u" * 41}]},  # 11
            ]
        },
        "response": {"choices": [{"message": {"role": "assistant", "content": "a" * 8}}]},
    }
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (p,) = openai_chat.convert([path])
    assert (p.prefix_tokens, p.steps) == (10, (S(11, 2, ""),))


# --- thundersim live log --------------------------------------------------------------------------


def test_live_log_reconstructs_programs():
    p0, p1 = thundersim_live.convert([LIVE])
    assert p0 == prog(
        "p0",
        "swe",
        ("swe-system", 100),
        [
            S(300 - 100, 50, "bash", 1.5),
            S(420 - 350, 30, "bash", 0.5),
            S(160 - 100, 20, "", reset=True),
        ],
        env=EnvSpec(prep_s=2.0, disk_bytes=2_000_000_000, ports=1),
    )
    assert p1 == prog(
        "p1",
        "chat",
        (None, 0),
        [S(80, 10, "python", 3.0), S(150 - 90, 25, "submit", 0.2)],
        arrival=1.5,
    )
    assert [p.workload for p in thundersim_live.convert([LIVE], workload="x")] == ["x", "x"]


def test_live_log_fields_are_the_simulator_step_columns_where_they_overlap():
    from thundersim.metrics.recorder import STEP_COLUMNS

    shared = set(thundersim_live.LIVE_LOG_FIELDS) & set(STEP_COLUMNS)
    assert shared == {
        "step",
        "tool",
        "ready_t",
        "sent_t",
        "done_t",
        "prompt_tokens",
        "cached_tokens",
        "output_tokens",
        "tool_s",
        "prep_s",
    }
    for key in thundersim_live.LIVE_LOG_FIELDS:
        assert key in thundersim_live.__doc__


def test_live_log_of_a_simulated_run_converts_back_to_the_same_calls(small_trace, tmp_path):
    """Write the log a live run writes (here from run_sim's steps and programs tables), convert
    it: every call has the original prompt and output tokens, resets included."""
    resetting = make_program(
        "r0", [(400, 50, 1.0), (300, 40, 2.0), (120, 30, 0.5, True), (90, 20, 0.0)], prep_s=3.0
    )
    specs = [*small_trace, resetting]
    # no tool manager: preparation takes exactly the trace's prep_s (no contention model)
    result = run_sim(specs, concurrency=4, kv_tokens=40_000, tool_manager=None)
    assert len(result.steps) == sum(len(p.steps) for p in specs)
    path = tmp_path / "live.jsonl"
    write_live_log(result, specs, path)  # exactly what a live run writes

    converted = {p.id: p for p in thundersim_live.convert([path])}
    assert set(converted) == {p.id for p in specs}
    for orig in specs:
        got = converted[orig.id]
        n = len(orig.steps)
        assert [got.prompt_tokens(i) for i in range(n)] == [orig.prompt_tokens(i) for i in range(n)]
        assert [s.output_tokens for s in got.steps] == [s.output_tokens for s in orig.steps]
        # inputs, tools and resets too; tool seconds up to float rounding of the sim clock
        assert [(s.input_tokens, s.tool, s.reset) for s in got.steps] == [
            (s.input_tokens, s.tool, s.reset) for s in orig.steps
        ]
        assert [s.tool_s for s in got.steps] == pytest.approx([s.tool_s for s in orig.steps])
        assert (got.prefix_id, got.prefix_tokens, got.workload) == (
            orig.prefix_id,
            orig.prefix_tokens,
            orig.workload,
        )
        assert got.env.prep_s == pytest.approx(orig.env.prep_s)
    assert converted["r0"].steps[2].reset


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, paths",
    [
        ("swe-agent", SWE_TRAJS),
        ("mini-swe-agent", MINI_TRAJS),
        ("openai-chat", [CHAT]),
        ("thundersim-live", [LIVE]),
    ],
)
def test_convert_dump_load_gives_the_same_programs(fmt, paths, tmp_path):
    programs = convert(fmt, paths)
    assert programs
    assert roundtrip(programs, tmp_path) == programs


# --- bad input ------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def chat_records() -> list[dict]:
    return [json.loads(line) for line in CHAT.read_text().splitlines()]


def live_rows() -> list[dict]:
    return [json.loads(line) for line in LIVE.read_text().splitlines()]


def test_chat_missing_completion_tokens_names_line_and_field(tmp_path):
    recs = chat_records()
    del recs[1]["response"]["usage"]["completion_tokens"]
    path = write_jsonl(tmp_path / "c.jsonl", recs)
    with pytest.raises(TraceError) as e:
        openai_chat.convert([path])
    assert str(e.value) == (
        f"{path}:2: missing required field (field response.usage.completion_tokens)"
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ("[1, 2]", "expected a JSON object, got an array"),
        ('{"program_id": "x",', "not valid JSON"),
        ('{"program_id": "x", "response": {}}', "missing required field (field request)"),
        (
            '{"program_id": "x", "request": {"messages": []}}',
            "missing required field (field response)",
        ),
        (
            '{"program_id": "x", "request": {"messages": [{"role": "user"}]}, "response": '
            '{"choices": [{"message": {"role": "assistant", "content": "a"}}]}}',
            "message has no content (field request.messages[0].content)",
        ),
        (
            '{"program_id": 1.5, "request": {}, "response": {}}',
            "expected a string, got a number (field program_id)",
        ),
        (
            '{"program_id": "x", "request": {}, "response": {"usage": {"prompt_tokens": 5, '
            '"completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 9}}}}',
            "(field response.usage.prompt_tokens_details.cached_tokens)",
        ),
    ],
)
def test_chat_bad_lines(tmp_path, line, message):
    path = write_jsonl(tmp_path / "c.jsonl", [chat_records()[0], line])
    with pytest.raises(TraceError) as e:
        openai_chat.convert([path])
    assert str(e.value).startswith(f"{path}:2: ")
    assert message in str(e.value)


def test_swe_agent_step_without_response_names_its_line(tmp_path):
    doc = json.loads(SWE_TRAJS[0].read_text())
    del doc["trajectory"][1]["response"]
    del doc["trajectory"][1]["thought"]
    path = tmp_path / "bad.traj"
    path.write_text(json.dumps(doc, indent=2))
    step_line = line_of(path, '"action": "open django') - 1  # the line its "{" is on
    with pytest.raises(TraceError) as e:
        swe_agent.convert([path])
    assert str(e.value) == (
        f"{path}:{step_line}: step has no response (nor thought) (field trajectory[1].response)"
    )


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("trajectory"), "trajectory"),
        (lambda d: d.update(trajectory=[]), "trajectory"),
        (lambda d: d["trajectory"][0].update(execution_time=-1), "trajectory[0].execution_time"),
        (lambda d: d["trajectory"][0].update(action=5), "trajectory[0].action"),
        (lambda d: d["history"][2].pop("content"), "history[2].content"),
    ],
)
def test_swe_agent_bad_fields(tmp_path, mutate, field):
    doc = json.loads(SWE_TRAJS[0].read_text())
    mutate(doc)
    path = tmp_path / "bad.traj"
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(TraceError, match=rf"^{path}:\d+: .*\(field {re.escape(field)}\)$"):
        swe_agent.convert([path])


def test_single_json_files_report_syntax_errors_and_missing_files(tmp_path):
    path = tmp_path / "broken.traj"
    path.write_text('{\n  "trajectory": [\n    {"action": }\n  ]\n}\n')
    with pytest.raises(TraceError, match=rf"^{path}:3: not valid JSON"):
        swe_agent.convert([path])
    missing = tmp_path / "nope.traj.json"
    with pytest.raises(TraceError, match=rf"^{missing}: no such file$"):
        mini_swe_agent.convert([missing])
    path.write_text("[]")
    with pytest.raises(TraceError, match=rf"^{path}:1: expected a JSON object, got an array$"):
        swe_agent.convert([path])


def test_mini_swe_agent_bad_messages(tmp_path):
    doc = json.loads(MINI_TRAJS[1].read_text())
    del doc["messages"][4]["extra"]["response"]["usage"]["completion_tokens"]
    path = tmp_path / "bad.traj.json"
    path.write_text(json.dumps(doc, indent=2))
    msg_line = line_of(path, '"content": "THOUGHT: Edit.') - 2  # {"role" on the line after "{"
    with pytest.raises(TraceError) as e:
        mini_swe_agent.convert([path])
    assert str(e.value) == (
        f"{path}:{msg_line}: missing required field "
        "(field messages[4].extra.response.usage.completion_tokens)"
    )

    doc = json.loads(MINI_TRAJS[0].read_text())
    del doc["messages"][2]["content"]
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(
        TraceError, match=r"message has no content \(field messages\[2\]\.content\)$"
    ):
        mini_swe_agent.convert([path])

    path.write_text(json.dumps({"trajectory_format": "swe-agent", "messages": []}))
    with pytest.raises(TraceError, match=r"\(field trajectory_format\)$"):
        mini_swe_agent.convert([path])
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "x"}]}))
    with pytest.raises(TraceError, match=rf"^{path}:1: no assistant message.*\(field messages\)$"):
        mini_swe_agent.convert([path])


def _live_case(mutate):
    rows = live_rows()
    mutate(rows)
    return rows


@pytest.mark.parametrize(
    "mutate, line, message",
    [
        (lambda r: r[2].pop("done_t"), 3, "missing required field (field done_t)"),
        (lambda r: r[2].update(output_tokens=0), 3, "(field output_tokens)"),
        (lambda r: r[2].update(step=0), 3, "logged twice (also at"),
        (lambda r: r[2].update(step=5), 4, "program 'p0' has no step 1 before step 2 (field step)"),
        (lambda r: r[4].update(arrival_s=9.0), 5, "(field arrival_s)"),
        (lambda r: r[2].update(prefix_tokens=7), 3, "(field prefix_tokens)"),
        (lambda r: r[3].update(prompt_tokens=100), 4, "(field prompt_tokens)"),
        (lambda r: r[3].update(cached_tokens=1000), 4, "(field cached_tokens)"),
        (lambda r: r[0].update(tool="", tool_s=1.0), 1, "(field tool)"),
        (lambda r: r[0].update(sent_t=1.0), 1, "times out of order"),
    ],
)
def test_live_log_bad_lines(tmp_path, mutate, line, message):
    path = write_jsonl(tmp_path / "live.jsonl", _live_case(mutate))
    with pytest.raises(TraceError) as e:
        thundersim_live.convert([path])
    assert str(e.value).startswith(f"{path}:{line}: ")
    assert message in str(e.value)


def test_empty_log_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    for fn in (openai_chat.convert, thundersim_live.convert):
        with pytest.raises(TraceError, match="no records"):
            fn([path])


def test_convert_refuses_unknown_formats_and_options():
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        convert("nope", [CHAT])
    with pytest.raises(ValueError, match="--program-field does not apply to --format swe-agent"):
        convert("swe-agent", SWE_TRAJS, program_field="x")


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_convert_writes_a_loadable_trace(tmp_path):
    result = runner.invoke(
        app, ["trace", "convert", "--format", "openai-chat", str(CHAT), "--workload", "agents"]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "t.jsonl"
    out.write_text(result.stdout)
    programs = load_trace(out)
    assert programs == openai_chat.convert([CHAT], workload="agents")

    result = runner.invoke(app, ["trace", "convert", "--format", "swe-agent", *map(str, SWE_TRAJS)])
    assert result.exit_code == 0, result.output
    out.write_text(result.stdout)
    assert [p.id for p in load_trace(out)] == ["django__django-11099", "astropy__astropy-12907"]


def test_cli_convert_bad_input_exits_2_with_the_message(tmp_path):
    recs = chat_records()
    del recs[1]["response"]["usage"]["completion_tokens"]
    path = write_jsonl(tmp_path / "c.jsonl", recs)
    result = runner.invoke(app, ["trace", "convert", "--format", "openai-chat", str(path)])
    assert result.exit_code == 2
    assert (
        f"error: {path}:2: missing required field (field response.usage.completion_tokens)"
        in result.stderr
    )
    assert result.stdout == ""

    result = runner.invoke(app, ["trace", "convert", "--format", "csv", str(path)])
    assert result.exit_code == 2
    assert "unknown format 'csv'" in result.stderr
    for fmt in CONVERTERS:
        assert fmt in result.stderr

    result = runner.invoke(
        app,
        ["trace", "convert", "--format", "swe-agent", "--program-field", "x", str(SWE_TRAJS[0])],
    )
    assert result.exit_code == 2
    assert "--program-field does not apply" in result.stderr
