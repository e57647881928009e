"""The swe generator reproduces the published statistics it cites (WORKLOADS.md), per seed."""

from __future__ import annotations

import numpy as np
import pytest

from thundersim.traces.workloads import swe

SEEDS = [0, 1, 2, 3, 4]
N_PROGRAMS = 300  # the size of the bundled trace; big enough for stable medians


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def programs(request):
    return swe.generate(N_PROGRAMS, request.param)


def within(value: float, target: float, tolerance: float) -> bool:
    return abs(value - target) <= tolerance * target


def test_turns_median_near_corpus_p50(programs):
    """Median turns per program is within ±25% of the corpus's p50 of 36."""
    turns = [len(p.steps) for p in programs]
    assert within(float(np.median(turns)), 36, 0.25)


def test_turns_respect_step_limit_and_minimum(programs):
    """No program exceeds mini-SWE-agent's 135-step limit or falls below the minimum."""
    turns = [len(p.steps) for p in programs]
    assert max(turns) <= swe.TURNS_MAX == 135
    assert min(turns) >= swe.TURNS_MIN


def test_peak_context_median_near_corpus_p50(programs):
    """Median peak context is within ±35% of the corpus's p50 of 23.8K tokens."""
    peaks = [p.final_context for p in programs]
    assert within(float(np.median(peaks)), 23_800, 0.35)


def test_peak_context_tail_is_heavy_but_fits_the_window(programs):
    """p95 peak context is within ±35% of the corpus's 69.3K, and no program exceeds 128K."""
    peaks = [p.final_context for p in programs]
    assert within(float(np.percentile(peaks, 95)), 69_300, 0.35)
    assert max(peaks) <= swe.MAX_CONTEXT_TOKENS


def test_bash_seconds_median_near_aiperf_tool_delay(programs):
    """Median bash time is within ±25% of aiperf's tool-like delay median of 2 s."""
    bash = [s.tool_s for p in programs for s in p.steps if s.tool == "bash"]
    assert within(float(np.median(bash)), 2.0, 0.25)


def test_editor_calls_are_sub_second_and_a_minority(programs):
    """Editor calls are rare and almost all under a second; bash is the main tool."""
    steps = [s for p in programs for s in p.steps]
    editor = [s.tool_s for s in steps if s.tool == "editor"]
    assert 0.05 < len(editor) / len(steps) < 0.15
    assert np.percentile(editor, 95) < 1.0


def test_every_program_ends_in_submit_and_shares_the_system_prompt(programs):
    """The last action is "submit"; every program carries the shared "swe-system" prefix."""
    for p in programs:
        assert p.steps[-1].tool == "submit"
        assert all(s.tool in ("bash", "editor") for s in p.steps[:-1])
        assert (p.prefix_id, p.prefix_tokens) == ("swe-system", swe.SYSTEM_PROMPT_TOKENS)


def test_environment_matches_mini_swe_sandbox(programs):
    """Prep time is near the paper's 29.9 s, disk near 2 GB, one port per sandbox."""
    assert within(float(np.median([p.env.prep_s for p in programs])), 29.9, 0.10)
    assert within(float(np.median([p.env.disk_bytes for p in programs])), 2e9, 0.10)
    assert {p.env.ports for p in programs} == {1}


def test_arrivals_are_a_poisson_stream_at_the_stated_rate(programs):
    """Arrivals start at 0, never go back in time, and average ARRIVALS_PER_MIN (±25%)."""
    arrivals = [p.arrival_s for p in programs]
    assert arrivals[0] == 0.0
    assert arrivals == sorted(arrivals)
    rate_per_min = (len(arrivals) - 1) / (arrivals[-1] / 60.0)
    assert within(rate_per_min, swe.ARRIVALS_PER_MIN, 0.25)


def test_ids_are_zero_padded_and_ordered(programs):
    """Program ids are swe-0000, swe-0001, … in order."""
    assert [p.id for p in programs] == [f"swe-{i:04d}" for i in range(N_PROGRAMS)]


def test_zero_programs_is_an_error():
    """Asking for no programs is a mistake, not an empty trace."""
    with pytest.raises(ValueError):
        swe.generate(0, 0)


def test_main_writes_the_trace_to_stdout(capsys):
    """`python -m thundersim.traces.workloads.swe --programs N --seed S` prints N JSON lines."""
    swe.main(["--programs", "3", "--seed", "5"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith('{"version":1,"id":"swe-0000"')
