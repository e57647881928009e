"""The `thundersim` command line: policies, run (JSON, tables), trace gen, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from thundersim.cli import app
from thundersim.policies import registry
from thundersim.sim.catalog import GPUS
from thundersim.traces.loader import load_trace

runner = CliRunner()

SUMMARY_KEYS = {
    "policy",
    "trace",
    "concurrency",
    "replicas",
    "seed",
    "simulated_s",
    "wall_s",
    "steps_completed",
    "programs_completed",
    "throughput_steps_per_min",
    "kv_hit_rate",
    "preemptions",
    "recompute_tokens",
    "stp_cost",
}
STP_KEYS = {"decode", "prefill", "recompute", "caching", "unused"}
SMALL_RUN = ["--concurrency", "4", "--kv-tokens", "150000", "--no-progress"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def trace12(tmp_path_factory) -> Path:
    """A 12-program SWE trace made by `thundersim trace gen`."""
    result = invoke("trace", "gen", "--workload", "swe", "--programs", "12", "--seed", "1")
    assert result.exit_code == 0, result.output
    path = tmp_path_factory.mktemp("trace") / "swe12.jsonl"
    path.write_text(result.stdout)
    return path


def total_steps(path: Path) -> int:
    return sum(len(p.steps) for p in load_trace(path))


def test_policies_lists_every_registered_policy_one_per_line():
    """`thundersim policies` prints one line per policy (its name and a description, then its
    parameters indented), then one line per router."""
    result = invoke("policies")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    split = next(i for i, line in enumerate(lines) if line.startswith("routers"))
    policy_lines = [line for line in lines[:split] if not line.startswith(" ")]
    router_lines = lines[split + 1 :]
    names = [line.split()[0] for line in policy_lines]
    assert {"vllm", "stp"} <= set(names)
    assert sorted(names) == sorted(registry.names())
    assert len(names) == len(set(names))
    for line in policy_lines + router_lines:
        assert len(line.split(maxsplit=1)) == 2, f"no description: {line!r}"
    assert sorted(line.split()[0] for line in router_lines) == registry.router_names()
    assert "--param aging_s=60" in result.stdout  # parameters and their defaults are listed


def test_run_json_prints_exactly_one_json_object_with_the_summary(trace12):
    """`run --json` prints one JSON object on stdout and nothing else: the summary, with the
    five STP cost terms, and every step of the trace completed."""
    result = invoke("run", "--trace", str(trace12), "--json", *SMALL_RUN)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the whole stdout is one JSON document
    assert isinstance(summary, dict)
    assert summary.keys() >= SUMMARY_KEYS
    assert set(summary["stp_cost"]) >= STP_KEYS
    assert summary["policy"] == "stp"  # the default policy
    assert summary["trace"] == str(trace12)
    assert summary["concurrency"] == 4 and summary["replicas"] == 1 and summary["seed"] == 0
    assert summary["steps_completed"] == total_steps(trace12)
    assert summary["programs_completed"] == 12
    assert summary["simulated_s"] > 0 and summary["throughput_steps_per_min"] > 0
    assert 0 <= summary["kv_hit_rate"] <= 1
    # --kv-tokens sizes the pool as vLLM does (150000 // 16 = 9375 blocks); one is the null block
    assert summary["kv_capacity_tokens"] == (150000 // 16 - 1) * 16


def test_run_json_is_deterministic_under_a_seed(trace12):
    """Same trace, policy and seed: the same summary, except the wall-clock fields."""
    runs = [
        json.loads(
            invoke(
                "run",
                "--trace",
                str(trace12),
                "--json",
                "--policy",
                "vllm",
                "--seed",
                "3",
                *SMALL_RUN,
            ).stdout
        )
        for _ in range(2)
    ]
    for s in runs:
        s.pop("wall_s")
        s.pop("sim_speed", None)
    assert runs[0] == runs[1]
    assert runs[0]["policy"] == "vllm" and runs[0]["seed"] == 3


def test_run_out_writes_parquet_tables_and_summary(trace12, tmp_path):
    """`--out DIR` writes steps, programs and memory as Parquet plus summary.json; the steps
    table has one row per step of the trace and summary.json is the printed summary."""
    out = tmp_path / "results"
    result = invoke("run", "--trace", str(trace12), "--json", "--out", str(out), *SMALL_RUN)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert {p.name for p in out.iterdir()} >= {
        "steps.parquet",
        "programs.parquet",
        "memory.parquet",
        "summary.json",
    }
    steps = pd.read_parquet(out / "steps.parquet")
    programs = pd.read_parquet(out / "programs.parquet")
    memory = pd.read_parquet(out / "memory.parquet")
    assert len(steps) == total_steps(trace12)
    assert len(programs) == 12
    assert len(memory) > 0
    assert json.loads((out / "summary.json").read_text()) == printed


def test_run_without_json_prints_a_table(trace12):
    """Without --json the summary is a human-readable table."""
    result = invoke("run", "--trace", str(trace12), *SMALL_RUN)
    assert result.exit_code == 0, result.output
    assert "throughput" in result.stdout and "KV hit rate" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_malformed_trace_fails_with_file_and_line_and_writes_nothing(trace12, tmp_path):
    """A trace whose third line is broken exits non-zero naming PATH:3, and no result
    tables are written."""
    lines = trace12.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], lines[2][: len(lines[2]) // 2], *lines[3:]]))
    out = tmp_path / "results"
    result = invoke("run", "--trace", str(bad), "--out", str(out), "--json", *SMALL_RUN)
    assert result.exit_code != 0
    assert f"{bad}:3:" in result.output
    assert result.stdout.strip() == ""  # no JSON half-printed
    assert not out.exists() or not any(out.iterdir())


def test_missing_trace_file_fails_naming_it(tmp_path):
    """A trace path that does not exist is an error, not a traceback."""
    missing = tmp_path / "nope.jsonl"
    result = invoke("run", "--trace", str(missing), *SMALL_RUN)
    assert result.exit_code != 0
    assert str(missing) in result.output
    assert "Traceback" not in result.output


def test_unknown_policy_fails_listing_the_valid_ones(trace12):
    result = invoke("run", "--trace", str(trace12), "--policy", "fifo-magic", *SMALL_RUN)
    assert result.exit_code != 0
    assert "fifo-magic" in result.output
    for name in registry.names():
        assert name in result.output


def test_unknown_gpu_fails_listing_the_valid_ones(trace12):
    result = invoke("run", "--trace", str(trace12), "--gpu", "TPU-v9", *SMALL_RUN)
    assert result.exit_code != 0
    assert "TPU-v9" in result.output
    for name in GPUS:
        assert name in result.output


def test_trace_that_cannot_fit_is_refused(trace12):
    """A KV capacity below a program's final context is refused up front (vLLM rejects such
    a request too) instead of hanging."""
    result = invoke(
        "run", "--trace", str(trace12), "--concurrency", "4", "--kv-tokens", "1000", "--no-progress"
    )
    assert result.exit_code != 0
    assert "KV capacity" in result.output


def test_trace_gen_is_deterministic_per_seed():
    """Same workload, count and seed: byte-identical JSONL; another seed: another trace."""
    args = ["trace", "gen", "--workload", "swe", "--programs", "5"]
    first = invoke(*args, "--seed", "7")
    second = invoke(*args, "--seed", "7")
    other = invoke(*args, "--seed", "8")
    assert first.exit_code == second.exit_code == other.exit_code == 0
    assert first.stdout == second.stdout
    assert first.stdout != other.stdout
    assert len(first.stdout.splitlines()) == 5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--workload", "nosuch", "--programs", "3"], "nosuch"),
        (["--programs", "0"], "--programs"),
    ],
)
def test_trace_gen_rejects_bad_arguments(args, needle):
    result = invoke("trace", "gen", *args)
    assert result.exit_code != 0
    assert needle in result.output


def test_installed_entry_point_runs_end_to_end(tmp_path):
    """The `thundersim` console script installed beside this Python generates a trace and
    simulates it, printing one JSON object."""
    exe = Path(sys.executable).with_name("thundersim")
    if not exe.exists():
        pytest.skip(f"no thundersim entry point beside {sys.executable}")
    gen = subprocess.run(
        [str(exe), "trace", "gen", "--workload", "swe", "--programs", "6", "--seed", "2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    trace = tmp_path / "t.jsonl"
    trace.write_text(gen.stdout)
    run = subprocess.run(
        [str(exe), "run", "--trace", str(trace), "--policy", "vllm", "--json", *SMALL_RUN],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["policy"] == "vllm"
    assert summary["steps_completed"] == total_steps(trace)
    assert run.stderr == ""  # --no-progress: nothing on stderr either


def test_catalog_lists_hardware_and_the_provenance_table():
    from pathlib import Path

    listed = runner.invoke(app, ["catalog"])
    assert listed.exit_code == 0 and "H100-SXM" in listed.stdout and "GLM-4.6" in listed.stdout
    table = runner.invoke(app, ["catalog", "--provenance"])
    assert table.exit_code == 0
    doc = Path(__file__).resolve().parent.parent / "docs" / "PROVENANCE.md"
    assert table.stdout == doc.read_text()  # the same generated table as the committed doc


@pytest.mark.parametrize("policy", registry.names())
def test_run_json_stdout_is_only_the_json_object_for_every_policy(trace12, policy):
    """`run --json` as a real process (a solver's log written to file descriptor 1, as HiGHS
    may write it, would pass CliRunner unseen): stdout parses as one JSON object for every
    registered policy, on a pool small enough that stp_exact solves its victim MILPs."""
    r = subprocess.run(
        [sys.executable, "-c", "from thundersim.cli import main; main()", "run"]
        + ["--trace", str(trace12), "--policy", policy, "--json", "--no-progress"]
        + ["--concurrency", "12", "--kv-tokens", "140000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["policy"] == policy and summary["programs_completed"] == 12
