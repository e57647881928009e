"""Readings whose numbers come from the run (thundersim/lab/readings.py): placeholders render from the
run's table, unknown names fail naming the spec and the placeholder, and a reading that types a
result outside its placeholders is refused."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from thundersim.lab import readings
from thundersim.lab.figures import specs_in
from thundersim.lab.formats import format_value
from thundersim.lab.readings import ReadingError, check, render, report_reading
from thundersim.lab.report import FigureResult, write_report
from thundersim.lab.sweep import load_spec

ROOT = Path(__file__).resolve().parent.parent

SPEC = """
name = "mini"
title = "a test spec"
kind = "line"
reading = '''x'''
{extra}

[base]
trace = "traces/swe.jsonl"
tp = 8

[grid]
policy = ["vllm", "stp"]
concurrency = [24, 96]

[plot]
x = "concurrency"
series = "policy"
metrics = ["throughput_steps_per_min", "kv_hit_rate"]

[paper.throughput_steps_per_min]
vllm = [220, 140]
stp = [218, 371]

[paper.disk_headline_bytes]
vllm = 3.3e12
stp = 0.8e12
"""


def _spec(tmp_path: Path, extra: str = "", text: str = SPEC):
    path = tmp_path / "mini.toml"
    path.write_text(text.replace("{extra}", extra))
    return load_spec(path)


TABLE = pd.DataFrame(
    {
        "policy": ["vllm", "vllm", "stp", "stp"],
        "concurrency": [24, 96, 24, 96],
        "throughput_steps_per_min": [207.09, 216.48, 207.09, 426.57],
        "kv_hit_rate": [0.977, 0.373, 0.977, 0.871],
        "env.peak_disk_bytes": [6.0e10, 2.86e12, 6.0e10, 1.07e12],
    }
)


def test_values_metrics_formats_ratios_and_paper_numbers(tmp_path):
    spec = _spec(tmp_path)
    text = (
        "stp {stp@96} (paper {paper stp@96}, {change stp/paper stp@96:%} above); "
        "vLLM hit {vllm@96:kv_hit_rate:%}, stp {stp@96:kv_hit_rate}; "
        "{ratio stp/vllm@96:x1} vLLM's; disk {vllm@96:env.peak_disk_bytes:TB} "
        "(paper {paper vllm:disk_headline_bytes:TB1}); range {min *@*}–{max stp@24..96}; "
        "{stp@96::1} {{literal}}"
    )
    check(text, spec)
    assert render(spec, TABLE, text=text) == (
        "stp 427 (paper 371, 15 % above); vLLM hit 37 %, stp 0.87; 2.0× vLLM's; disk 2.86 TB "
        "(paper 3.3 TB); range 207–427; 426.6 {literal}"
    )


def test_the_specs_own_reading_is_rendered_by_default(tmp_path):
    spec = _spec(tmp_path, text=SPEC.replace("'''x'''", "'''stp {stp@96} at 96.'''"))
    assert render(spec, TABLE) == "stp 427 at 96."


def test_series_over_several_keys_quoted_x_and_comparison_rows(tmp_path):
    spec = _spec(
        tmp_path,
        text=SPEC.replace(
            'policy = ["vllm", "stp"]', 'policy = ["vllm", "stp"]\ndecay = ["pow:2", "pow:8"]'
        )
        .replace('x = "concurrency"', 'x = "decay"')
        .replace('series = "policy"', 'series = ["policy", "concurrency"]'),
    )
    table = pd.DataFrame(
        {
            "policy": ["stp", "stp"],
            "concurrency": [96, 96],
            "decay": ["pow:2", "pow:8"],
            "throughput_steps_per_min": [427.0, 417.0],
        }
    )
    rows = [SimpleNamespace(metric="tool p99 (s)", series="stp/96", x="t", sim=27.1, paper=35)]
    text = (
        "{stp/96@'pow:2'} / {stp/96@'pow:8'}: {ratio stp/96@'pow:2' / stp/96@'pow:8':x2}; "
        "p99 {stp/96:tool p99 (s)} vs {paper stp/96:tool p99 (s)}"
    )
    assert render(spec, table, rows, text=text) == "427 / 417: 1.02×; p99 27.1 vs 35"


@pytest.mark.parametrize(
    ("placeholder", "problem"),
    [
        ("{foo@96}", "unknown series 'foo'; have stp, vllm"),
        ("{stp@97}", "unknown x '97' (concurrency); have 24, 96"),
        ("{stp@96:nope}", "unknown metric 'nope'"),
        ("{stp}", "2 points match"),
        ("{stp@*}", "use min, max or mean"),
        ("{paper stp@96:kv_hit_rate}", "no paper number for 'kv_hit_rate'"),
        ("{ratio stp}", "needs two sides"),
        ("{stp@96:kv_hit_rate:zz}", "format 'zz'"),
    ],
)
def test_an_unknown_name_fails_naming_the_spec_and_the_placeholder(tmp_path, placeholder, problem):
    spec = _spec(tmp_path)
    with pytest.raises(ReadingError) as err:
        render(spec, TABLE, text=f"at 96: {placeholder}.")
    msg = str(err.value)
    assert str(spec.path) in msg and placeholder in msg and problem in msg


def test_a_point_outside_the_reduced_grid_is_a_dash_but_missing_from_a_full_run(tmp_path):
    spec = _spec(tmp_path)
    reduced = TABLE[TABLE.concurrency == 24]
    assert render(spec, reduced, reduced=True, text="{stp@96} {ratio stp/vllm@96}") == "— —"
    with pytest.raises(ReadingError, match=r"\{stp@96\}: the run has no point stp@96"):
        render(spec, reduced, text="{stp@96}")


def test_check_refuses_a_typed_number(tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(ReadingError) as err:
        check("stp at 96 runs 15 % above the paper (427 vs {paper stp@96})", spec)
    msg = str(err.value)
    assert str(spec.path) in msg and "'15'" in msg and "'427'" in msg
    assert "'96'" not in msg  # a grid value
    for typed in (
        "a 2× gain",
        "8K tokens",
        "hit 0.87",
        "1,086 s",
        "3.2M tokens",
        "stp {stp@96}, 427",
    ):
        with pytest.raises(ReadingError, match="typed numbers"):
            check(typed, spec)


def test_check_accepts_inputs_references_years_and_names(tmp_path):
    spec = _spec(tmp_path, extra="reading_constants = [20]")
    check(
        "At 24 and 96 (the grid) on 8×H100 (tp, a base value) GLM-4.6 and Qwen3-235B-A22B, "
        "as Fig 4a, Fig. 4a/5a, Table 2, §3.2, Section 4, issue 4, Problem 2 and arXiv 2602.13692 "
        "(2026) show, p99 spread > 20 % (a declared constant): {stp@96}.",
        spec,
    )
    with pytest.raises(ReadingError, match="'20'"):
        check("spread > 20 %", _spec(tmp_path))  # not declared


def test_check_refuses_a_bad_placeholder_before_any_run(tmp_path):
    with pytest.raises(ReadingError, match=r"\{stp@96:a:b:c\}"):
        check("{stp@96:a:b:c}", _spec(tmp_path))


@pytest.mark.parametrize(
    ("value", "fmt", "text"),
    [
        (426.57, "", "427"),
        (20.83, "", "20.8"),
        (0.871, "", "0.87"),
        (1234.5, "", "1,234"),
        (0.871, "%", "87 %"),
        (0.871, "pct", "87"),
        (0.028, "+%1", "+2.8 %"),
        (-0.044, "+%1", "−4.4 %"),
        (-0.0001, "+%1", "0.0 %"),
        (1.456, "x", "1.46×"),
        (2.4, "x1", "2.4×"),
        (2.86e12, "TB", "2.86 TB"),
        (3.19e6, "M1", "3.2 M"),
        (0.8, ".3f", "0.800"),
        (math.nan, "%", "—"),
        ("vllm", "", "vllm"),
    ],
)
def test_formats(value, fmt, text):
    assert format_value(value, fmt) == text


# ---- the repository's specs --------------------------------------------------------------------
def test_every_checked_reading_renders_from_the_committed_tables():
    """What `thundersim figures` does with each reading, on the committed figures/data (the
    report's computed sim-vs-paper rows are not in the data: a reading naming one is left to
    the figures run)."""
    for spec in specs_in():
        text = spec.raw.get("reading", "")
        if not text:
            continue
        check(text, spec)
        table = readings.run_table(spec, ROOT / "figures" / "data")
        try:
            render(spec, table, text=text)
        except ReadingError as exc:
            if "unknown metric" not in str(exc):
                raise


def test_the_report_renders_a_reading_from_the_run_table(tmp_path):
    spec = _spec(tmp_path, text=SPEC.replace("'''x'''", "'''stp {stp@96} at 96.'''"))
    (tmp_path / "data").mkdir()
    TABLE.to_csv(tmp_path / "data" / "mini.csv", index=False)
    res = FigureResult(spec)
    assert report_reading(res, tmp_path / "data") == "*Reading.* stp 427 at 96."


def test_the_figures_report_fails_on_a_reading_that_does_not_check(tmp_path):
    spec = _spec(tmp_path, text=SPEC.replace("'''x'''", "'''stp reaches 427 at 96.'''"))
    (tmp_path / "data").mkdir()
    TABLE.to_csv(tmp_path / "data" / "mini.csv", index=False)
    timing = {"reduced": False, "points_run": 0, "points_cached": 0, "simulate_s": 0, "total_s": 0}
    with pytest.raises(ReadingError, match=r"mini\.toml: reading: typed numbers.*'427'"):
        write_report([FigureResult(spec)], tmp_path / "REPORT.md", timing)
    good = _spec(tmp_path, text=SPEC.replace("'''x'''", "'''stp reaches {stp@96} at 96.'''"))
    write_report([FigureResult(good)], tmp_path / "REPORT.md", timing)
    assert "*Reading.* stp reaches 427 at 96." in (tmp_path / "REPORT.md").read_text()


def test_a_validation_spec_reads_its_results_file():
    spec = specs_in(only=["own_validation"])[0]
    table = readings.run_table(spec, ROOT / "figures" / "data")
    text = "{vllm:throughput_steps_per_min.rel_error:+%1}"
    assert re.fullmatch(r"[+−]\d+\.\d %", render(spec, table, text=text))
